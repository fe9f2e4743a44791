// Small helpers the demo's modules share for finding and building elements, and for sizes.
export const $ = (id) => document.getElementById(id);

export const mb = (n) => (n < 1e6 ? `${Math.ceil(n / 1e3)} kB` : `${(n / 1e6).toFixed(1)} MB`);

/** A small button; `onClick` gets the click event. */
export function smallButton(text, className, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `secondary small ${className}`;
  button.textContent = text;
  button.addEventListener("click", onClick);
  return button;
}
