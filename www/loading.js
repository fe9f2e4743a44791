// Loading the models: the Guard is created from the query string's choices, with a progress
// bar per file and a badge that says where the models run.
//
// A link is anyone's to craft, so model URLs from the query string must be on this site
// (or on an origin the page's author lists in <meta name="webguard-model-origins">), and the
// files must still have the sha256 the Guard's manifest gives them: a crafted link cannot
// load, or cache, a neutered encoder or a hostile GGUF.
import { Guard } from "../pkg/guard.js";
import { $, mb } from "./dom.js";
import { renderRules } from "./settings.js";
import { setReady, state } from "./state.js";

export const params = new URLSearchParams(location.search);
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

function onProgress(p) {
  if (p.phase === "init") {
    $("load-status").textContent = "building the models…";
    return;
  }
  if (p.phase === "module") {
    if (!p.done) $("load-status").textContent = p.file.includes("tune") ? "loading the tuning module…" : "loading the wasm module…";
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
  const filter = b.filter ? `\nFilter: ${b.filter.reason}` : "";
  const chat = b.chat?.reason ? `\nChat model on the CPU: ${b.chat.reason}` : "";
  badge.title = (b.reason ? `Running on the CPU: ${b.reason}` : "Running on the GPU through WebGPU") + filter + chat;
  $("backend-note")?.remove();
  if (b.kind === "cpu" && b.reason) {
    const note = document.createElement("p");
    note.id = "backend-note";
    note.className = "hint";
    note.textContent = `Running on the CPU: ${b.reason}.`;
    $("loading").after(note);
  }
}

export async function load() {
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
