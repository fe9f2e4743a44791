// The Teach panel's actions: the buttons under a checked text or a chat message that add it to
// the examples ("should have been flagged", "should not have been", "answer like this
// instead"), training the filter or the chat from the rows (teach-rows.js) with a loss plot and
// a before/after table, and saving, loading and forgetting the adapters.
import { $, mb, smallButton } from "./dom.js";
import { renderRules } from "./settings.js";
import { setReady, state } from "./state.js";
import { addLines, addRow, collectExamples, renumberRows, setMode, teachLabel } from "./teach-rows.js";

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
export function teachActions(text, kinds, prompt = "") {
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

/** The Train, Stop, Forget, Save and Load buttons, and an empty loss plot. */
export function initTeach() {
  $("teach").addEventListener("click", teach);
  $("teach-stop").addEventListener("click", () => state.teachAbort?.abort());
  $("teach-reset").addEventListener("click", async () => {
    await state.guard.resetAdapters("all");
    renderRules();
    $("teach-status").textContent = `tuning forgotten (filter and chat): labels ${state.guard.labels.join(", ")}`;
  });
  $("teach-save").addEventListener("click", saveAdapters);
  $("teach-load").addEventListener("change", (e) => { if (e.target.files[0]) loadAdapters(e.target.files[0]); e.target.value = ""; });
  plotLoss([], Number($("teach-steps").value));
}
