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
    $("chat-stats").textContent = reply.tokens
      ? `${reply.tokens} tokens · ${reply.tokensPerSecond.toFixed(1)} tokens/s${reply.stopReason === "cancelled" ? " · stopped" : ""}`
      : reply.blocked ? "blocked before generation" : "";
  } catch (e) {
    body.textContent = "";
    markBlocked(assistantLi, `error: ${e.message}`);
    $("chat-stats").textContent = "";
  } finally {
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

/** Examples from JSONL, with the line number of anything malformed: filter examples
 *  `{ text, label, value }` or chat pairs `{ prompt, response }` (not mixed). */
function parseExamples(text) {
  const examples = [];
  let kind;
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let e;
    try { e = JSON.parse(line); } catch (err) { throw new Error(`line ${i + 1}: not JSON (${err.message})`); }
    const isFilter = typeof e?.text === "string" && typeof e?.label === "string" && typeof e?.value === "boolean";
    const isChat = typeof e?.prompt === "string" && typeof e?.response === "string";
    if (!isFilter && !isChat) {
      throw new Error(`line ${i + 1}: expected { "text", "label", "value": true | false } (teach the filter) or { "prompt", "response" } (teach the chat)`);
    }
    const k = isFilter ? "filter" : "chat";
    if (kind && k !== kind) throw new Error(`line ${i + 1}: filter examples and chat pairs are mixed`);
    kind = k;
    examples.push(isFilter ? { text: e.text, label: e.label, value: e.value } : { prompt: e.prompt, response: e.response });
  });
  return { kind: kind ?? "filter", examples };
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
    ({ kind, examples } = parseExamples($("teach-examples").value));
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
      $("teach-status").textContent = `trained ${report.labels.join(", ")}${report.newLabels.length ? ` (new: ${report.newLabels.join(", ")})` : ""} · final loss ${report.finalLoss.toFixed(4)}`;
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
