// What several test pages share: model locations, downloads, and how a call that should fail
// is reported to the test driver.

export const GGUF = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
export const MINILM = "/models/all-MiniLM-L6-v2";
/** The Guard API's options for the same models. */
export const filterUrl = `${MINILM}/`;
export const chatUrl = GGUF;

export const bytes = async (url) => {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
};

/** MiniLM's tokenizer, config and weights (f32), as the wasm `Filter` takes them. */
export const minilm = async () => [
  await bytes(`${MINILM}/tokenizer.json`),
  await bytes(`${MINILM}/config.json`),
  await bytes(`${MINILM}/model.safetensors`),
];

/** The spoiler label's training examples (tests/data/tune). */
export const spoilers = async () => {
  const lines = await (await fetch("/tests/data/tune/spoiler-train.jsonl")).text();
  return lines.trim().split("\n").map((l) => JSON.parse(l));
};

/** Each case's outcome: `ok(result)` when it returns, "Error: message" when it throws (the
 *  thrown value's type instead of "Error" when it is not an Error). */
export async function outcomes(cases, ok = () => "no error") {
  const out = {};
  for (const [name, call] of Object.entries(cases)) {
    try {
      out[name] = ok(await call());
    } catch (e) {
      out[name] = `${e instanceof Error ? "Error" : typeof e}: ${e.message ?? e}`;
    }
  }
  return out;
}
