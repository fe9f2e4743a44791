// The demo page: loads the wasm module, says which backend runs, and tokenizes text.
import init, { version, probeBackend, Tokenizer, Filter } from "../pkg/webguard.js";

const $ = (id) => document.getElementById(id);
const tokenizers = {};

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`could not load ${url} (HTTP ${r.status}); run ./build.sh serve, which fetches the models`);
  return new Uint8Array(await r.arrayBuffer());
}

async function tokenizer(which) {
  tokenizers[which] ??= which === "smollm2"
    ? Tokenizer.fromGguf(await fetchBytes("../models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    : Tokenizer.fromTokenizerJson(await fetchBytes("../models/all-MiniLM-L6-v2/tokenizer.json"));
  return tokenizers[which];
}

let filterPromise;
/** The filter on the best backend, loaded on first use (about 90 MB of model files). */
function filter() {
  filterPromise ??= (async () => {
    const dir = "../models/all-MiniLM-L6-v2";
    $("check-status").textContent = "loading the filter (MiniLM, 90 MB)…";
    const [tok, config, model, heads] = await Promise.all([
      fetchBytes(`${dir}/tokenizer.json`), fetchBytes(`${dir}/config.json`),
      fetchBytes(`${dir}/model.safetensors`), fetchBytes("../assets/filter-heads.safetensors"),
    ]);
    return Filter.create("auto", tok, config, model, heads);
  })();
  filterPromise.catch(() => { filterPromise = undefined; });
  return filterPromise;
}

/** One list item per text: its verdict and a bar per label with the threshold marked. */
function renderVerdicts(texts, verdicts, labels, thresholds) {
  const list = $("verdicts");
  list.replaceChildren();
  texts.forEach((text, i) => {
    const v = verdicts[i];
    const li = document.createElement("li");
    li.className = v.flagged ? "flagged" : "ok";
    const head = document.createElement("p");
    head.className = "verdict";
    head.textContent = `${v.flagged ? `Flagged: ${v.labels.join(", ")}` : "OK"} — ${text || "(empty)"}`;
    li.append(head);
    labels.forEach((label, j) => {
      const row = document.createElement("div");
      row.className = "score";
      const name = document.createElement("span");
      name.textContent = label;
      const meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.value = v.scores[label]; meter.high = thresholds[j];
      meter.setAttribute("aria-label", `${label} score`);
      const value = document.createElement("span");
      value.textContent = `${v.scores[label].toFixed(3)} (threshold ${thresholds[j].toFixed(2)})`;
      row.append(name, meter, value);
      li.append(row);
    });
    list.append(li);
  });
}

async function main() {
  await init();
  $("version").textContent = `v${version()}`;
  try {
    const b = await probeBackend("auto");
    $("badge").textContent = b.kind === "webgpu" ? `WebGPU: ${b.adapter || "adapter"}` : `CPU (${b.reason})`;
    $("badge").dataset.kind = b.kind;
  } catch (e) {
    $("badge").textContent = `backend error: ${e.message}`;
  }
  $("check").addEventListener("click", async () => {
    const texts = $("check-text").value.split("\n");
    $("check").disabled = true;
    try {
      const f = await filter();
      $("check-status").textContent = `checking ${texts.length} text(s) on ${f.backendDescription}…`;
      const t0 = performance.now();
      const verdicts = await f.classify(texts);
      renderVerdicts(texts, verdicts, f.labels, Array.from(f.thresholds));
      $("check-status").textContent = `${texts.length} text(s) in ${Math.round(performance.now() - t0)} ms on ${f.backend}`;
    } catch (e) {
      $("check-status").textContent = `error: ${e.message}`;
    } finally {
      $("check").disabled = false;
    }
  });
  $("go").addEventListener("click", async () => {
    $("ids").textContent = "…";
    try {
      const tok = await tokenizer($("model").value);
      const ids = tok.encode($("text").value);
      $("ids").textContent = `${ids.length} tokens: [${Array.from(ids).join(", ")}]`;
    } catch (e) {
      $("ids").textContent = `error: ${e.message}`;
    }
  });
}

main().catch((e) => { $("badge").textContent = `failed to start: ${e.message}`; });
