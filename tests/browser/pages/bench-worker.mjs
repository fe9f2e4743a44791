// scripts/bench-browser.mjs --threads: webguard's wasm Chat (kind "chat") or Filter (kind
// "classify") in a worker, as guard-worker.js runs them: the single-threaded module
// (webguard.js), or the threaded one (webguard_threads.js) with helper workers
// (pkg/guard-thread.js) on its shared memory. A worker because the pool's threads may wait
// (Atomics.wait), which a page's main thread may not.
import { GGUF, MINILM } from "./common.mjs";
import { classifyMs } from "./bench-common.mjs";

const fetchBytes = async (url) => new Uint8Array(await (await fetch(url)).arrayBuffer());

/** Classify latency: the filter the Guard's worker loads (the 8-bit encoder, the shipped
 *  heads), median of `runs` calls on each batch size after a warm-up. */
async function classify(mod, batches, runs) {
  const f = await mod.Filter.create(
    "cpu", await fetchBytes(`${MINILM}/tokenizer.json`), await fetchBytes(`${MINILM}/config.json`),
    await fetchBytes("/pkg/all-MiniLM-L6-v2.int8.safetensors"), await fetchBytes("/assets/filter-heads.safetensors"));
  const out = {};
  for (const batch of batches) out[batch] = await classifyMs(f, batch, runs);
  f.free();
  return out;
}

self.onmessage = async ({ data: { module, threads, kind = "chat", message, maxTokens, batches = [1, 32], runs = 3 } }) => {
  try {
    const mod = module === "threads" ? await import("/pkg/webguard_threads.js") : await import("/pkg/webguard.js");
    await mod.default();
    let n = 1;
    if (module === "threads") {
      n = mod.startThreads(threads);
      const [wasmModule, memory] = mod.threadModuleAndMemory();
      await Promise.all(Array.from({ length: n - 1 }, () => new Promise((resolve, reject) => {
        const w = new Worker("/pkg/guard-thread.js", { type: "module" });
        w.onmessage = ({ data }) => (data.ok ? resolve() : reject(new Error(data.message)));
        w.onerror = (e) => reject(new Error(e.message || "a helper failed to load"));
        w.postMessage({ module: wasmModule, memory });
      })));
    }
    if (kind === "classify") {
      const msByBatch = await classify(mod, batches, runs);
      self.postMessage({ ok: true, result: { module, threads: n, joined: mod.threadJobsJoined?.() ?? 0, msByBatch } });
      return;
    }
    const gguf = await fetchBytes(GGUF);
    const chat = await mod.Chat.create("cpu", gguf);
    await chat.generate([{ role: "user", content: "Hi" }], { maxTokens: 2 });
    let first;
    const t0 = performance.now();
    const r = await chat.generate([{ role: "user", content: message }], { maxTokens }, () => { first ??= performance.now(); });
    const t1 = performance.now();
    const joined = mod.threadJobsJoined?.() ?? 0; // webguard.js built before it had none
    chat.free();
    self.postMessage({
      ok: true,
      result: {
        module, threads: n, joined, promptTokens: r.promptTokens, tokens: r.tokens.length, ttftMs: first - t0,
        prefillPerSecond: r.promptTokens / ((first - t0) / 1000), decodePerSecond: (r.tokens.length - 1) / ((t1 - first) / 1000),
      },
    });
  } catch (e) {
    self.postMessage({ ok: false, message: `${e?.name}: ${e?.message ?? e}` });
  }
};
