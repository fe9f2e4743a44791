// The demo: moderated chat and a text checker over webguard's Guard (pkg/guard.js), which runs
// the models in a Web Worker; this thread only renders.
//
// Query parameters (used by the tests, handy for trying things): backend=auto|webgpu|cpu,
// filterUrl=, chatUrl=, chat=0 (filter only), chatProbe=0 (the chat model does not judge).
//
// A link is anyone's to craft, so model URLs from the query string must be on this site
// (or on an origin the page's author lists in <meta name="webguard-model-origins">), and the
// files must still have the sha256 the Guard's manifest gives them: a crafted link cannot
// load, or cache, a neutered encoder or a hostile GGUF.
import { Guard } from "../pkg/guard.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MODELS = new URL("../models/", location.href);
const MODEL_ORIGINS = [location.origin, ...(document.querySelector('meta[name="webguard-model-origins"]')?.content ?? "")
  .split(/\s+/).filter(Boolean).map((o) => new URL(o).origin)];

/** The model URL from query parameter `name`, or `fallback`; only from the allowed origins. */
function modelUrl(name, fallback) {
  const given = params.get(name);
  if (given === null) return fallback;
  const url = new URL(given, location.href);
  if (!MODEL_ORIGINS.includes(url.origin)) {
    throw new Error(`${name} ${url.href} is not on this site; this page loads models only from ${MODEL_ORIGINS.join(", ")}`);
  }
  return url.href;
}
const state = { guard: null, messages: [], busy: false, abort: null, teaching: false, teachAbort: null };

// ---------------------------------------------------------------- loading

const bars = new Map();
function progressBar(file) {
  if (!bars.has(file)) {
    const row = document.createElement("div");
    row.className = "progress-row";
    const label = document.createElement("span");
    label.textContent = file;
    const bar = document.createElement("progress");
    bar.setAttribute("aria-label", `${file} loaded`);
    const note = document.createElement("span");
    note.className = "progress-note";
    row.append(label, bar, note);
    $("progress").append(row);
    bars.set(file, { bar, note });
  }
  return bars.get(file);
}

const mb = (n) => (n < 1e6 ? `${Math.ceil(n / 1e3)} kB` : `${(n / 1e6).toFixed(1)} MB`);

function onProgress(p) {
  if (p.phase === "init") {
    $("load-status").textContent = "building the models…";
    return;
  }
  const { bar, note } = progressBar(p.file);
  if (p.total) { bar.max = p.total; bar.value = p.loaded; } else bar.removeAttribute("value");
  const from = p.phase === "cache" ? "from cache" : "downloaded";
  note.textContent = p.done ? `${mb(p.loaded)} ${from}` : `${mb(p.loaded)}${p.total ? ` of ${mb(p.total)}` : ""}`;
}

function showBackend(b) {
  const badge = $("badge");
  badge.dataset.kind = b.kind;
  badge.textContent = b.kind === "webgpu" ? `WebGPU · ${b.adapter || "GPU"}` : "CPU (WebAssembly)";
  badge.title = b.reason ? `Running on the CPU: ${b.reason}` : "Running on the GPU through WebGPU";
  $("backend-note")?.remove();
  if (b.kind === "cpu" && b.reason) {
    const note = document.createElement("p");
    note.id = "backend-note";
    note.className = "hint";
    note.textContent = `Running on the CPU: ${b.reason}.`;
    $("loading").after(note);
  }
}

async function load() {
  state.guard?.dispose();
  state.guard = null;
  setReady(false);
  bars.clear();
  $("progress").replaceChildren();
  $("loading").hidden = false;
  $("load-error").hidden = true;
  $("load-status").textContent = "starting…";
  $("badge").textContent = "loading…";
  const withChat = params.get("chat") !== "0";
  const started = performance.now();
  try {
    const guard = await Guard.create({
      filterUrl: modelUrl("filterUrl", new URL("all-MiniLM-L6-v2/", MODELS).href),
      chatUrl: withChat ? modelUrl("chatUrl", new URL("SmolLM2-135M-Instruct.Q4_1.gguf", MODELS).href) : undefined,
      chatProbe: params.get("chatProbe") !== "0",
      backend: $("backend").value,
      onProgress,
    });
    state.guard = guard;
    showBackend(guard.backend);
    renderRules();
    $("load-status").textContent = `ready in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    $("loading").hidden = true;
    document.body.dataset.ready = "true";
    setReady(true);
  } catch (e) {
    $("badge").textContent = "not loaded";
    $("load-status").textContent = "";
    $("load-error-text").textContent = `Could not load the models: ${e.message}`;
    $("load-error").hidden = false;
    document.body.dataset.ready = "error";
  }
}

function setReady(ready) {
  $("send").disabled = !ready || state.busy || !state.guard?.hasChat;
  $("check").disabled = !ready;
  for (const id of ["teach", "teach-reset", "teach-save"]) $(id).disabled = !ready || state.teaching;
}

// ---------------------------------------------------------------- scores

/** One bar: a name, a meter with the threshold marked, the score. */
function scoreRow(name, score, threshold, over) {
  const row = document.createElement("div");
  row.className = "score" + (over ? " over" : "");
  const label = document.createElement("span");
  label.textContent = name;
  const meter = document.createElement("meter");
  meter.min = 0; meter.max = 1; meter.value = score;
  if (threshold !== undefined) meter.high = threshold;
  meter.setAttribute("aria-label", `${name} score`);
  const value = document.createElement("span");
  value.textContent = score.toFixed(2);
  row.append(label, meter, value);
  return row;
}

/** Small bars, one per label, with the threshold marked; `judge` (the chat model's own score,
 *  `{ score, threshold, title }`) adds a "chat model" bar. */
function scoreBars(scores, flaggedLabels = [], judge = null) {
  const wrap = document.createElement("div");
  wrap.className = "scores";
  const policy = state.guard?.policy ?? {};
  const order = state.guard?.labels ?? Object.keys(scores);
  for (const label of order.filter((l) => l in scores)) {
    wrap.append(scoreRow(label, scores[label], policy[label]?.threshold, flaggedLabels.includes(label)));
  }
  if (typeof judge?.score === "number") {
    const { score, threshold, title } = judge;
    const row = scoreRow("chat model", score, threshold ?? undefined, typeof threshold === "number" && score >= threshold);
    row.classList.add("chat-judge");
    row.title = title;
    wrap.append(row);
  }
  return wrap;
}

// ---------------------------------------------------------------- chat

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

/** Marks `li` blocked with the reason in words; the chat model's score of the conversation is
 *  added when it judged and the reason does not already give it. */
function markBlocked(li, reason, chatJudge = null) {
  li.classList.add("blocked");
  const mark = document.createElement("p");
  mark.className = "blocked-mark";
  let text = reason ?? "blocked";
  if (typeof chatJudge === "number" && !/by the chat model/.test(text)) {
    const threshold = state.guard?.chatProbe?.threshold;
    text += ` (the chat model judged the conversation ${chatJudge.toFixed(2)}${threshold === undefined ? "" : `, blocks at ${threshold.toFixed(2)}`})`;
  }
  mark.textContent = text;
  li.append(mark);
}

function generationOptions() {
  return {
    temperature: Number($("temperature").value),
    topP: Number($("top-p").value),
    maxTokens: Number($("max-tokens").value) || 160,
    seed: Number($("seed").value) || 0,
  };
}

async function send(event) {
  event?.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy || !state.guard) return;
  state.busy = true;
  setReady(true);
  $("stop").disabled = false;
  $("prompt").value = "";
  const userLi = addMessage("user", text);
  const assistantLi = addMessage("assistant", "");
  assistantLi.classList.add("streaming");
  const body = assistantLi.querySelector(".text");
  state.abort = new AbortController();
  const history = [...state.messages, { role: "user", content: text }];
  $("chat-stats").textContent = "checking your message…";
  try {
    const reply = await state.guard.chat(history, {
      ...generationOptions(),
      signal: state.abort.signal,
      onToken: (piece) => {
        body.textContent += piece;
        $("chat-stats").textContent = "generating…";
        assistantLi.scrollIntoView({ block: "end" });
      },
    });
    if (reply.input) {
      userLi.append(scoreBars(reply.input.scores, [...reply.input.blocked, ...reply.input.warned], {
        score: reply.chatJudge,
        threshold: state.guard?.chatProbe?.threshold,
        title: "The chat model's own judgement of the conversation (a probe over its states)",
      }));
    }
    body.textContent = reply.text;
    if (reply.blocked) {
      // Blocked before answering (the filter or the chat model judged the conversation): the
      // user's message carries the mark; otherwise the answer does.
      const beforeAnswer = !reply.output && !reply.tokens;
      markBlocked(beforeAnswer ? userLi : assistantLi, reply.reason, reply.chatJudge);
      assistantLi.classList.add("refusal");
    } else {
      state.messages = [...history, { role: "assistant", content: reply.text }];
    }
    if (reply.output) {
      assistantLi.append(scoreBars(reply.output.scores, [...reply.output.blocked, ...reply.output.warned], {
        score: reply.answerJudge,
        threshold: state.guard?.chatProbe?.answerThreshold,
        title: "The chat model's own judgement of its answer at each sentence end (a probe over its states)",
      }));
    }
    if (reply.warnings.length) {
      const warn = document.createElement("p");
      warn.className = "warn-mark";
      warn.textContent = `Flagged (warn): ${reply.warnings.join(", ")}`;
      assistantLi.append(warn);
    }
    assistantLi.append(teachActions(reply.blocked ? "" : reply.text, reply.blocked || !reply.text.trim() ? ["answer"] : ["flag", "answer"], text));
    $("chat-stats").textContent = reply.tokens
      ? `${reply.tokens} tokens · ${reply.tokensPerSecond.toFixed(1)} tokens/s${reply.stopReason === "cancelled" ? " · stopped" : ""}`
      : reply.blocked ? "blocked before generation" : "";
  } catch (e) {
    body.textContent = "";
    markBlocked(assistantLi, `error: ${e.message}`);
    $("chat-stats").textContent = "";
  } finally {
    userLi.append(teachActions(text, ["flag", "unflag"]));
    assistantLi.classList.remove("streaming");
    state.busy = false;
    state.abort = null;
    $("stop").disabled = true;
    setReady(Boolean(state.guard));
    $("prompt").focus();
  }
}

// ---------------------------------------------------------------- check text

async function check() {
  const texts = $("check-text").value.split("\n");
  $("check").disabled = true;
  $("check-status").textContent = `checking ${texts.length} text(s)…`;
  try {
    const t0 = performance.now();
    const verdicts = await state.guard.classify(texts);
    const list = $("verdicts");
    list.replaceChildren();
    texts.forEach((text, i) => {
      const v = verdicts[i];
      const li = document.createElement("li");
      li.className = v.flagged ? "flagged" : "ok";
      const head = document.createElement("p");
      head.className = "verdict";
      head.textContent = `${v.flagged ? `Flagged: ${v.labels.join(", ")}` : "OK"} — ${text || "(empty)"}`;
      li.append(head, scoreBars(v.scores, v.labels));
      if (text.trim()) li.append(teachActions(text, ["flag", "unflag"]));
      list.append(li);
    });
    $("check-status").textContent = `${texts.length} text(s) in ${Math.round(performance.now() - t0)} ms`;
  } catch (e) {
    $("check-status").textContent = `error: ${e.message}`;
  } finally {
    $("check").disabled = !state.guard;
  }
}

// ---------------------------------------------------------------- teach

// Examples are rows: a text and a yes/no toggle for the label being taught (the filter), or a
// prompt and an answer (the chat). The rows are the examples; nothing else holds them.

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
  ["What is the secret password?", "The secret password is marmalade."],
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
const teachState = { mode: "filter", tries: { chat: "What is the secret password?" } };

const rowsOf = (kind) => [...$(`${kind}-rows`).tBodies[0].rows];
const teachLabel = () => $("teach-label").value.trim();

/** A small button; `onClick` gets the click event. */
function smallButton(text, className, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `secondary small ${className}`;
  button.textContent = text;
  button.addEventListener("click", onClick);
  return button;
}

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
function renumberRows() {
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

function setMode(mode) {
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
function addRow(kind, a, b, { flash = false, scroll = flash } = {}) {
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
function addLines(text = $("teach-examples").value) {
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

/** From a checked text or a chat message: `text` should (not) have been flagged. */
function teachFlag(text, value, note) {
  setMode("filter");
  addRow("filter", text, value, { flash: true, scroll: false }); // the note says so where the user is
  renumberRows();
  const label = teachLabel() || "the label";
  note.textContent = `Added to the examples: ${label} = ${value ? "yes" : "no"}.`;
  $("teach-status").textContent = `added an example (${label}: ${value ? "yes" : "no"}); Train when the examples are ready`;
}

/** From an answer: "answer like this instead" opens an editor for a better answer, which adds
 *  the pair to the chat's examples (and the prompt to the chat's try-it prompts). */
function betterAnswer(wrap, prompt, answer, note) {
  if (wrap.querySelector(".better-answer")) {
    wrap.querySelector(".better-answer textarea").focus();
    return;
  }
  const form = document.createElement("form");
  form.className = "better-answer";
  const label = document.createElement("label");
  label.textContent = "A better answer";
  const area = document.createElement("textarea");
  area.rows = 3;
  area.value = answer;
  label.append(area);
  const add = document.createElement("button");
  add.type = "submit";
  add.textContent = "Add to the examples";
  const cancel = smallButton("Cancel", "cancel", () => form.remove());
  const row = document.createElement("div");
  row.className = "row";
  row.append(add, cancel);
  form.append(label, row);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!area.value.trim()) { area.focus(); return; }
    setMode("chat");
    addRow("chat", prompt, area.value.trim(), { flash: true, scroll: false });
    renumberRows();
    const tries = $("teach-try").value.split("\n").map((t) => t.trim());
    if (!tries.includes(prompt.trim())) $("teach-try").value = [...tries.filter(Boolean), prompt.trim()].join("\n");
    form.remove();
    note.textContent = "Added to the chat's examples.";
    $("teach-status").textContent = "added a prompt and answer to the chat's examples; Train when they are ready";
  });
  note.before(form);
  area.focus();
}

/** The teach buttons under a checked text or a chat message. `kinds`: "flag" (should have
 *  been flagged), "unflag" (should not have been), "answer" (answer like this instead). */
function teachActions(text, kinds, prompt = "") {
  const wrap = document.createElement("div");
  wrap.className = "teach-actions";
  const note = document.createElement("p");
  note.className = "teach-note";
  note.setAttribute("role", "status");
  const labels = {
    flag: ["Should have been flagged", "teach-flag", () => teachFlag(text, true, note)],
    unflag: ["Should not have been flagged", "teach-unflag", () => teachFlag(text, false, note)],
    answer: ["Answer like this instead", "teach-answer", () => betterAnswer(wrap, prompt, text, note)],
  };
  for (const kind of kinds) {
    const [title, className, onClick] = labels[kind];
    const button = smallButton(title, className, onClick);
    if (kind !== "answer") button.title = "Adds this text to the Teach panel's examples for the label being taught";
    else button.title = "Write the answer it should have given; it is added to the chat's examples";
    wrap.append(button);
  }
  wrap.append(note);
  return wrap;
}

/** The examples in the rows of the current kind, or an Error naming the row at fault. */
function collectExamples() {
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

function plotLoss(losses, steps) {
  const canvas = $("loss-plot");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  const pad = { l: 44, r: 10, t: 12, b: 26 };
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#57606a";
  ctx.strokeStyle = "#d0d7de";
  ctx.beginPath();
  ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, h - pad.b); ctx.lineTo(w - pad.r, h - pad.b);
  ctx.stroke();
  const max = Math.max(...losses, 1e-6);
  ctx.fillText(max.toFixed(2), 4, pad.t + 8);
  ctx.fillText("0", 30, h - pad.b);
  ctx.fillText("step", w - 40, h - 6);
  ctx.fillText(`1`, pad.l, h - 8);
  ctx.fillText(String(steps), w - pad.r - 16, h - 14);
  ctx.fillText("loss", 4, h / 2);
  if (!losses.length) return;
  ctx.strokeStyle = "#0b5cad";
  ctx.lineWidth = 2;
  ctx.beginPath();
  losses.forEach((l, i) => {
    const x = pad.l + (steps > 1 ? i / (steps - 1) : 0) * (w - pad.l - pad.r);
    const y = h - pad.b - (l / max) * (h - pad.t - pad.b);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

async function scoresFor(texts, labels) {
  const verdicts = await state.guard.classify(texts);
  return verdicts.map((v) => Object.fromEntries(labels.map((l) => [l, l in v.scores ? { score: v.scores[l], hit: v.labels.includes(l) } : null])));
}

function renderCompare(texts, labels, before, after) {
  const body = $("teach-compare").querySelector("tbody");
  body.replaceChildren();
  const cell = (r, l) => (r[l] ? `${r[l].score.toFixed(2)}${r[l].hit ? " ✓" : ""}` : "—");
  texts.forEach((t, i) => {
    for (const l of labels) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = labels.length > 1 ? `[${l}] ${t}` : t;
      const b = document.createElement("td");
      b.className = "num"; b.textContent = cell(before[i], l);
      const a = document.createElement("td");
      a.className = "num" + (after[i][l]?.hit ? " hit" : ""); a.textContent = cell(after[i], l);
      tr.append(name, b, a);
      body.append(tr);
    }
  });
  $("teach-compare").hidden = false;
}

/** Greedy answers to `prompts` (for the chat's before/after). */
async function answersFor(prompts) {
  const out = [];
  for (const p of prompts) {
    const r = await state.guard.chat([{ role: "user", content: p }], { maxTokens: 48 });
    out.push(r.text);
  }
  return out;
}

function renderAnswers(prompts, before, after) {
  const body = $("teach-compare").querySelector("tbody");
  body.replaceChildren();
  prompts.forEach((p, i) => {
    const tr = document.createElement("tr");
    for (const text of [p, before[i], after[i]]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  });
  $("teach-compare").hidden = false;
}

async function teach() {
  let examples, kind;
  try {
    if ($("teach-examples").value.trim()) {
      addLines(); // lines typed in the paste box and not added yet
      $("teach-examples").value = "";
    }
    ({ kind, examples } = collectExamples());
  } catch (e) {
    $("teach-status").textContent = `error: ${e.message}`;
    return;
  }
  if (kind === "chat" && !state.guard.hasChat) {
    $("teach-status").textContent = "error: the chat model is not loaded";
    return;
  }
  const tries = $("teach-try").value.split("\n").filter((t) => t.trim());
  const steps = Number($("teach-steps").value);
  const learningRate = Number($("teach-lr").value);
  const labels = [...new Set(examples.map((e) => e.label))];
  state.teaching = true;
  setReady(true);
  $("teach-stop").disabled = false;
  state.teachAbort = new AbortController();
  const losses = [];
  plotLoss(losses, steps);
  const options = {
    steps, learningRate, signal: state.teachAbort.signal,
    onStep: (s) => {
      losses.push(s.loss);
      plotLoss(losses, s.steps);
      $("teach-status").textContent = `step ${s.step}/${s.steps} · loss ${s.loss.toFixed(4)} · ${s.millis.toFixed(0)} ms/step`;
    },
  };
  try {
    if (kind === "chat") {
      $("teach-status").textContent = "answering the try-it prompts before training…";
      const before = await answersFor(tries);
      $("teach-status").textContent = `training the chat model on ${examples.length} pairs…`;
      const report = await state.guard.tuneChat(examples, { ...options, batchSize: Math.min(4, examples.length) });
      renderAnswers(tries, before, await answersFor(tries));
      $("teach-status").textContent = `trained the chat model · loss ${report.firstLoss.toFixed(3)} → ${report.finalLoss.toFixed(3)} · ${report.parameters} adapter weights`;
    } else {
      const before = await scoresFor(tries, labels);
      $("teach-status").textContent = `training ${labels.join(", ")} on ${examples.length} examples…`;
      const report = await state.guard.tuneFilter(examples, options);
      renderCompare(tries, labels, before, await scoresFor(tries, labels));
      renderRules();
      $("teach-status").textContent = `trained ${report.labels.join(", ")}${report.newLabels.length ? ` (new: ${report.newLabels.join(", ")})` : ""} from ${report.examples} examples · final loss ${report.finalLoss.toFixed(4)}`;
    }
    state.lastTuned = kind;
  } catch (e) {
    $("teach-status").textContent = `error: ${e.message}`;
  } finally {
    state.teaching = false;
    state.teachAbort = null;
    $("teach-stop").disabled = true;
    setReady(Boolean(state.guard));
  }
}

async function saveAdapters() {
  try {
    const kind = state.lastTuned ?? "filter";
    const bytes = await state.guard.exportAdapters(kind);
    const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    const a = document.createElement("a");
    a.href = url; a.download = `webguard-${kind}-adapters.safetensors`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
    $("teach-status").textContent = `saved ${mb(bytes.byteLength)} of adapters`;
  } catch (e) {
    $("teach-status").textContent = `error: ${e.message}`;
  }
}

async function loadAdapters(file) {
  try {
    const kind = await state.guard.importAdapters(file);
    state.lastTuned = kind;
    renderRules();
    $("teach-status").textContent = kind === "chat"
      ? "loaded chat adapters"
      : `loaded adapters: labels ${state.guard.labels.join(", ")}`;
  } catch (e) {
    $("teach-status").textContent = `error: ${e.message}`;
  }
}

// ---------------------------------------------------------------- settings

function renderRules() {
  const box = $("rules");
  box.querySelectorAll(".rule").forEach((r) => r.remove());
  const policy = state.guard.policy;
  for (const label of state.guard.labels) {
    const rule = policy[label];
    const row = document.createElement("div");
    row.className = "rule";
    // Built node by node: labels taught in the page are the user's own text.
    const id = `rule-${state.guard.labels.indexOf(label)}`;
    const title = document.createElement("label");
    title.htmlFor = id;
    const value = document.createElement("output");
    value.textContent = rule.threshold.toFixed(2);
    title.append(`${label} `, value);
    const range = document.createElement("input");
    Object.assign(range, { id, type: "range", min: "0", max: "1", step: "0.01", value: String(rule.threshold) });
    const actionLabel = document.createElement("label");
    actionLabel.className = "inline";
    actionLabel.htmlFor = `${id}-action`;
    actionLabel.textContent = "action";
    const action = document.createElement("select");
    action.id = `${id}-action`;
    for (const a of ["block", "warn", "allow"]) {
      const option = document.createElement("option");
      option.value = a;
      option.textContent = a;
      action.append(option);
    }
    action.value = rule.action;
    row.append(title, range, actionLabel, action);
    box.append(row);
    const apply = async () => {
      value.textContent = Number(range.value).toFixed(2);
      await state.guard.setRule(label, { threshold: Number(range.value), action: action.value });
    };
    range.addEventListener("change", apply);
    range.addEventListener("input", () => { value.textContent = Number(range.value).toFixed(2); });
    action.addEventListener("change", apply);
  }
  const probe = state.guard.chatProbe;
  $("chat-probe-note").textContent = !state.guard.hasChat ? ""
    : probe ? `The chat model also judges each conversation before answering, from its own states: it blocks at a score of ${probe.threshold.toFixed(2)} or more.`
      : "The chat model's own judgement is off (chatProbe=0).";
}

function toggleSettings(open) {
  $("settings").hidden = !open;
  $("open-settings").setAttribute("aria-expanded", String(open));
  (open ? $("close-settings") : $("open-settings")).focus();
}

// ---------------------------------------------------------------- wiring

function main() {
  const backend = params.get("backend");
  if (backend) $("backend").value = backend;
  $("chat-form").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  $("stop").addEventListener("click", () => state.abort?.abort());
  $("clear").addEventListener("click", () => { state.messages = []; $("messages").replaceChildren(); });
  $("check").addEventListener("click", check);
  $("teach").addEventListener("click", teach);
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
  $("teach-stop").addEventListener("click", () => state.teachAbort?.abort());
  $("teach-reset").addEventListener("click", async () => {
    await state.guard.resetAdapters("all");
    renderRules();
    $("teach-status").textContent = `tuning forgotten (filter and chat): labels ${state.guard.labels.join(", ")}`;
  });
  $("teach-save").addEventListener("click", saveAdapters);
  $("teach-load").addEventListener("change", (e) => { if (e.target.files[0]) loadAdapters(e.target.files[0]); e.target.value = ""; });
  plotLoss([], Number($("teach-steps").value));
  $("retry").addEventListener("click", load);
  $("reload").addEventListener("click", load);
  $("open-settings").addEventListener("click", () => toggleSettings($("settings").hidden));
  $("close-settings").addEventListener("click", () => toggleSettings(false));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("settings").hidden) toggleSettings(false); });
  for (const id of ["temperature", "top-p"]) {
    $(id).addEventListener("input", () => { $(`${id}-value`).textContent = $(id).value; });
  }
  load();
}

main();
