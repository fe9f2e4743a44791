// The demo page: loads the wasm module, says which backend runs, and tokenizes text.
import init, { version, probeBackend, Tokenizer } from "../pkg/webguard.js";

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
