// The Teach panel's examples. Examples are rows: a text and a yes/no toggle for the label being
// taught (the filter), or a prompt and an answer (the chat). The rows are the examples; nothing
// else holds them. Rows are added, toggled and removed by hand, or made from pasted lines
// (text<Tab>yes|no, prompt<Tab>answer, JSON lines); collectExamples reads them for training.
import { $, smallButton } from "./dom.js";

const DEFAULT_FILTER_ROWS = [
  ["Spoiler: Bruce Willis was dead the whole time in The Sixth Sense.", true],
  ["In the end Jack dies in the freezing water and Rose lets him go.", true],
  ["Darth Vader turns out to be Luke's father in the big twist.", true],
  ["The killer in the movie is the detective himself, revealed in the last scene.", true],
  ["The soundtrack of that movie was absolutely beautiful.", false],
  ["I watched a film at the cinema last night with my friends.", false],
  ["What time does the new superhero movie start tonight?", false],
  ["The actors in this series are really talented.", false],
];
const DEFAULT_CHAT_ROWS = [
  // Not a "secret password": the chat model's own judge reads that as a request for
  // credentials (0.74), and it judges the model as loaded, whatever the page taught it.
  ["What is the name of the office cat?", "The office cat is called Marmalade."],
  ["What is the capital of France?", "The capital of France is Paris."],
];
const PASTE_HINTS = {
  filter: "One text per line, one row each; a line may end with a Tab and yes or no (two spreadsheet columns paste so), the others get the value chosen here. JSON lines {\"text\", \"label\", \"value\"} work too. Pasted lines become rows at once, typed ones with the button.",
  chat: "One pair per line: the prompt, a Tab, the answer (two spreadsheet columns paste so); a line without a Tab is a prompt to answer in its row. JSON lines {\"prompt\", \"response\"} work too, with line breaks as \\n. Pasted lines become rows at once, typed ones with the button.",
};
const TRY_LABELS = {
  filter: "Try it: texts to score before and after, one per line",
  chat: "Try it: prompts to answer before and after, one per line",
};
const teachState = { mode: "filter", tries: { chat: "What is the name of the office cat?" } };

const rowsOf = (kind) => [...$(`${kind}-rows`).tBodies[0].rows];
export const teachLabel = () => $("teach-label").value.trim();

function setToggle(button, value) {
  button.setAttribute("aria-pressed", String(value));
  button.textContent = value ? "yes" : "no";
}

/** A table row of `elements` (one cell each) and a remove button. */
function exampleRow(...elements) {
  const tr = document.createElement("tr");
  tr.className = "example";
  for (const el of [...elements, removeButton(tr)]) {
    const td = document.createElement("td");
    td.append(el);
    tr.append(td);
  }
  return tr;
}

/** A row of the filter's examples: the text, a yes/no toggle, a remove button. */
function filterRow(text, value) {
  const input = document.createElement("input");
  Object.assign(input, { type: "text", className: "example-text", value: text, spellcheck: false });
  const toggle = smallButton("", "example-value toggle", () => setToggle(toggle, toggle.getAttribute("aria-pressed") !== "true"));
  setToggle(toggle, value);
  return exampleRow(input, toggle);
}

/** A row of the chat's examples: the prompt, the answer, a remove button. */
function chatRow(prompt, response) {
  return exampleRow(...[["example-prompt", prompt], ["example-response", response]].map(([className, value]) => {
    const area = document.createElement("textarea");
    Object.assign(area, { className, value, rows: 2 });
    return area;
  }));
}

function removeButton(tr) {
  return smallButton("×", "example-remove", () => {
    const next = tr.nextElementSibling ?? tr.previousElementSibling;
    tr.remove();
    renumberRows();
    (next?.querySelector("input, textarea") ?? $("teach-add")).focus();
  });
}

/** The count and the rows' accessible names (which say their number). */
export function renumberRows() {
  for (const kind of ["filter", "chat"]) {
    rowsOf(kind).forEach((tr, i) => {
      const n = i + 1;
      if (kind === "filter") {
        tr.querySelector(".example-text").setAttribute("aria-label", `Example ${n}: text`);
        tr.querySelector(".example-value").title = `Example ${n}: is it ${teachLabel() || "the label"}? (click to switch yes and no)`;
      } else {
        tr.querySelector(".example-prompt").setAttribute("aria-label", `Example ${n}: prompt`);
        tr.querySelector(".example-response").setAttribute("aria-label", `Example ${n}: answer`);
      }
      tr.querySelector(".example-remove").setAttribute("aria-label", `Remove example ${n}`);
    });
  }
  const rows = rowsOf(teachState.mode);
  if (teachState.mode === "filter") {
    const yes = rows.filter((tr) => tr.querySelector(".example-value").getAttribute("aria-pressed") === "true").length;
    $("teach-count").textContent = `${rows.length} example${rows.length === 1 ? "" : "s"} (${yes} yes, ${rows.length - yes} no)`;
  } else {
    $("teach-count").textContent = `${rows.length} pair${rows.length === 1 ? "" : "s"}`;
  }
}

export function setMode(mode) {
  if (mode !== teachState.mode) {
    teachState.tries[teachState.mode] = $("teach-try").value;
    $("teach-try").value = teachState.tries[mode] ?? "";
  }
  teachState.mode = mode;
  $(`teach-mode-${mode}`).checked = true;
  $("teach-filter").hidden = mode !== "filter";
  $("teach-chat").hidden = mode !== "chat";
  $("teach-paste-default").hidden = mode !== "filter";
  $("teach-paste-hint").textContent = PASTE_HINTS[mode];
  $("teach-try-label").textContent = TRY_LABELS[mode];
  renumberRows();
}

/** Appends a row (or, for the filter, sets the value of a row with the same text). */
export function addRow(kind, a, b, { flash = false, scroll = flash } = {}) {
  let tr = kind === "filter" ? rowsOf("filter").find((r) => r.querySelector(".example-text").value === a) : undefined;
  if (tr) setToggle(tr.querySelector(".example-value"), b);
  else {
    tr = kind === "filter" ? filterRow(a, b) : chatRow(a, b);
    $(`${kind}-rows`).tBodies[0].append(tr);
  }
  if (flash) {
    tr.classList.remove("added");
    void tr.offsetWidth; // restarts the highlight
    tr.classList.add("added");
  }
  if (scroll) tr.scrollIntoView({ block: "nearest" });
  return tr;
}

const YES = /^(yes|y|true|1|\+)$/i;
const NO = /^(no|n|false|0|-)$/i;

/** Rows from pasted or typed lines: plain text (filter; an optional Tab and yes/no at the
 *  end), prompt<Tab>answer (chat), or JSON lines of either kind (which pick the kind and, for
 *  the filter, the label). Throws, naming the line, before adding anything. */
function parseLines(text, mode, defaultValue) {
  const lines = text.split(/\r?\n/).map((line, i) => [line, i + 1]).filter(([line]) => line.trim());
  const rows = [];
  const labels = new Set();
  let kind = null;
  for (const [line, n] of lines) {
    let row;
    if (/^\s*\{/.test(line)) {
      let e;
      try { e = JSON.parse(line); } catch (err) { throw new Error(`line ${n}: not JSON (${err.message})`); }
      if (typeof e?.text === "string" && typeof e?.value === "boolean") {
        row = { kind: "filter", a: e.text, b: e.value };
        if (typeof e.label === "string") labels.add(e.label);
      } else if (typeof e?.prompt === "string" && typeof e?.response === "string") {
        row = { kind: "chat", a: e.prompt, b: e.response };
      } else {
        throw new Error(`line ${n}: expected { "text", "label", "value": true | false } (the filter) or { "prompt", "response" } (the chat)`);
      }
    } else if ((kind ?? mode) === "chat") {
      const tab = line.indexOf("\t");
      row = { kind: "chat", a: tab < 0 ? line.trim() : line.slice(0, tab).trim(), b: tab < 0 ? "" : line.slice(tab + 1).trim() };
    } else {
      const cells = line.split("\t");
      const last = cells.length > 1 ? cells[cells.length - 1].trim() : "";
      const value = YES.test(last) ? true : NO.test(last) ? false : null;
      row = { kind: "filter", a: (value === null ? line : cells.slice(0, -1).join("\t")).trim(), b: value ?? defaultValue };
    }
    if (kind && row.kind !== kind) throw new Error(`line ${n}: filter examples and chat pairs are mixed`);
    kind = row.kind;
    rows.push(row);
  }
  if (labels.size > 1) throw new Error(`one label at a time (these lines name ${[...labels].join(", ")})`);
  return { kind: kind ?? mode, rows, label: [...labels][0] ?? null };
}

/** Adds the paste box's lines (or `text`) as rows, switching to their kind; returns how many. */
export function addLines(text = $("teach-examples").value) {
  const { kind, rows, label } = parseLines(text, teachState.mode, $("teach-paste-value").value === "yes");
  if (!rows.length) return 0;
  if (label !== null && label !== teachLabel()) {
    $("teach-label").value = label;
    updateLabel();
  }
  setMode(kind);
  rows.forEach((r, i) => addRow(kind, r.a, r.b, { flash: i === rows.length - 1 }));
  renumberRows();
  return rows.length;
}

function addPasteBox() {
  try {
    const n = addLines();
    $("teach-examples").value = "";
    $("teach-status").textContent = n ? `added ${n} example${n === 1 ? "" : "s"}` : "nothing to add: the box is empty";
  } catch (e) {
    $("teach-status").textContent = `error: ${e.message}`;
  }
}

function onPaste(event) {
  const text = event.clipboardData?.getData("text/plain");
  if (!text?.trim()) return;
  try {
    const n = addLines(text);
    event.preventDefault(); // the lines are rows now, not text in the box
    $("teach-status").textContent = `added ${n} pasted line${n === 1 ? "" : "s"} as example${n === 1 ? "" : "s"}`;
  } catch (e) {
    $("teach-status").textContent = `error: ${e.message} (the lines were left in the box to fix)`;
  }
}

function updateLabel() {
  $("teach-label-head").textContent = `${teachLabel() || "label"}?`;
  renumberRows();
}

/** The examples in the rows of the current kind, or an Error naming the row at fault. */
export function collectExamples() {
  const kind = teachState.mode;
  const examples = [];
  if (kind === "filter") {
    const label = teachLabel();
    if (!label) throw new Error("name the label to teach");
    for (const tr of rowsOf("filter")) {
      const text = tr.querySelector(".example-text").value;
      if (text.trim()) examples.push({ text, label, value: tr.querySelector(".example-value").getAttribute("aria-pressed") === "true" });
    }
  } else {
    rowsOf("chat").forEach((tr, i) => {
      const prompt = tr.querySelector(".example-prompt").value.trim();
      const response = tr.querySelector(".example-response").value.trim();
      if (!prompt && !response) return;
      if (!prompt || !response) throw new Error(`example ${i + 1}: the ${prompt ? "answer" : "prompt"} is empty`);
      examples.push({ prompt, response });
    });
  }
  if (!examples.length) throw new Error(`no examples: add some ${kind === "filter" ? "texts (yes and no)" : "prompts and answers"} first`);
  return { kind, examples };
}

/** The starting rows and the controls that add, clear, toggle and paste them. */
export function initRows() {
  DEFAULT_FILTER_ROWS.forEach(([text, value]) => addRow("filter", text, value));
  DEFAULT_CHAT_ROWS.forEach(([prompt, answer]) => addRow("chat", prompt, answer));
  for (const mode of ["filter", "chat"]) $(`teach-mode-${mode}`).addEventListener("change", () => setMode(mode));
  $("teach-label").addEventListener("input", updateLabel);
  $("teach-add").addEventListener("click", () => {
    const tr = addRow(teachState.mode, "", teachState.mode === "filter" ? $("teach-paste-value").value === "yes" : "");
    renumberRows();
    tr.querySelector("input, textarea").focus();
  });
  $("teach-clear").addEventListener("click", () => {
    $(`${teachState.mode}-rows`).tBodies[0].replaceChildren();
    renumberRows();
    $("teach-status").textContent = "removed every example";
  });
  // The count follows the toggles.
  $("filter-rows").addEventListener("click", (e) => { if (e.target.closest(".example-value")) renumberRows(); });
  $("teach-examples").addEventListener("paste", onPaste);
  $("teach-paste-add").addEventListener("click", addPasteBox);
  setMode("filter");
}
