// scripts/bench-browser.mjs --threads: webguard's wasm Chat in a worker, as guard-worker.js runs
// it: the single-threaded module (webguard.js), or the threaded one (webguard_threads.js) with
// helper workers (pkg/guard-thread.js) on its shared memory. A worker because the pool's
// threads may wait (Atomics.wait), which a page's main thread may not.
import { GGUF } from "./common.mjs";

self.onmessage = async ({ data: { module, threads, message, maxTokens } }) => {
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
    const gguf = new Uint8Array(await (await fetch(GGUF)).arrayBuffer());
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
