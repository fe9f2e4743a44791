// Measured by scripts/bench-browser.mjs: webguard's wasm Chat, Guard and Filter on a backend, and
// wllama (llama.cpp in wasm, from npm) on the same GGUF, in the same page.
import init, { Chat, Filter, Guard } from "/pkg/webguard.js";
// Tuning is in the second module (the first is built without it).
import initTuning, { Guard as TuningGuard } from "/pkg/webguard_tune.js";
import { Wllama } from "/tests/browser/node_modules/@wllama/wllama/esm/index.js";
import { GGUF, MINILM, bytes, minilm, spoilers } from "./common.mjs";
import { classifyMs, median } from "./bench-common.mjs";

const SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
const heads = () => bytes("/assets/filter-heads.safetensors");

await init();
await initTuning();
window.bench = {
  /** webguard's Chat in a worker (pages/bench-worker.mjs): `module` "single" (webguard.js) or
   *  "threads" (webguard_threads.js with `threads` threads); a new worker each time (a
   *  module's pool size is set once). */
  async workerChat(module, threads, message, maxTokens) {
    return this.inWorker({ module, threads, message, maxTokens });
  },
  /** Classify latency (median ms per batch size) in a worker, as `workerChat`. */
  async workerClassify(module, threads, batches, runs) {
    return this.inWorker({ module, threads, kind: "classify", batches, runs });
  },
  async inWorker(request) {
    const w = new Worker(new URL("./bench-worker.mjs", import.meta.url), { type: "module" });
    try {
      const { data } = await new Promise((resolve, reject) => {
        w.onmessage = resolve;
        w.onerror = (e) => reject(new Error(e.message || "the bench worker failed"));
        w.postMessage(request);
      });
      if (!data.ok) throw new Error(data.message);
      return data.result;
    } finally {
      w.terminate(); // its helper workers with it
    }
  },
  /** Prefill and decode speed of webguard's Chat: time to the first piece covers the
   *  prompt and the first token; decode is the rest. */
  async webguardChat(backend, message, maxTokens) {
    const chat = await Chat.create(backend, await bytes(GGUF));
    // Warm-up (first-use kernel compilation on WebGPU).
    await chat.generate([{ role: "user", content: "Hi" }], { maxTokens: 2 });
    let first;
    const t0 = performance.now();
    const r = await chat.generate([{ role: "user", content: message }], { maxTokens }, () => { first ??= performance.now(); });
    const t1 = performance.now();
    const out = {
      backend: chat.backendDescription, promptTokens: r.promptTokens, tokens: r.tokens.length,
      ttftMs: first - t0, prefillPerSecond: r.promptTokens / ((first - t0) / 1000),
      decodePerSecond: (r.tokens.length - 1) / ((t1 - first) / 1000),
    };
    chat.free();
    return out;
  },
  /** A moderated turn (the wasm Guard's chat, what pkg/guard.js's worker runs, with the
   *  worker's default files: the 8-bit filter encoder, the shipped heads and chat probes) next
   *  to the chat model alone (Chat.generate) on the same message and token budget, greedy,
   *  alternating `runs` times after a warm-up of each; medians (the ratio: of each pair's).
   *  The answers must be the same tokens (a long benign essay, never blocked), so the times
   *  compare per generated token. */
  async guardChat(message, maxTokens, runs) {
    const [tokenizer, config] = [await bytes(`${MINILM}/tokenizer.json`), await bytes(`${MINILM}/config.json`)];
    const model = await bytes("/pkg/all-MiniLM-L6-v2.int8.safetensors");
    const gguf = await bytes(GGUF);
    const g = await Guard.create("cpu", tokenizer, config, model, await heads(), gguf, await bytes("/assets/chat-probe.safetensors"));
    const chat = await Chat.create("cpu", gguf);
    const messages = [{ role: "user", content: message }];
    const options = { maxTokens };
    const plain = async () => {
      let first;
      const t0 = performance.now();
      const r = await chat.generate(messages, options, () => { first ??= performance.now(); });
      return { ms: performance.now() - t0, firstMs: first - t0, tokens: r.tokens.length, text: r.text };
    };
    const guarded = async () => {
      let first;
      const t0 = performance.now();
      const r = await g.chat(messages, options, () => { first ??= performance.now(); });
      return { ms: performance.now() - t0, firstMs: first - t0, tokens: r.tokens, text: r.text, blocked: r.blocked, reason: r.reason };
    };
    await plain();
    await guarded();
    const p = [], m = [];
    for (let i = 0; i < runs; i++) {
      p.push(await plain());
      m.push(await guarded());
      const [a, b] = [p.at(-1), m.at(-1)];
      if (b.blocked) throw new Error(`the benchmark's answer was blocked: ${b.reason}`);
      if (a.tokens !== b.tokens || a.text !== b.text) throw new Error(`the answers differ: ${a.tokens} tokens unmoderated, ${b.tokens} moderated`);
    }
    const ms = median(p.map((r) => r.ms)), guardedMs = median(m.map((r) => r.ms));
    const tokens = p[0].tokens;
    const out = {
      backend: chat.backendDescription, tokens, runs,
      unmoderatedMs: ms, moderatedMs: guardedMs,
      unmoderatedPerSecond: tokens / (ms / 1000), moderatedPerSecond: tokens / (guardedMs / 1000),
      // Each pair's ratio, then their median: load from other processes falls on both sides.
      ratio: median(m.map((r, i) => r.ms / p[i].ms)), ratios: m.map((r, i) => r.ms / p[i].ms),
      unmoderatedFirstMs: median(p.map((r) => r.firstMs)), moderatedFirstMs: median(m.map((r) => r.firstMs)),
      unmoderatedRunsMs: p.map((r) => r.ms), moderatedRunsMs: m.map((r) => r.ms),
    };
    chat.free();
    g.free();
    return out;
  },
  /** The same for wllama on the CPU, with the same rendered prompt: `threads` 1 is its
   *  single-threaded path; more uses its pthreads (the page is cross-origin isolated; wllama
   *  falls back to one thread otherwise, which `threads` in the result reports). */
  async wllamaChat(message, maxTokens, threads = 1) {
    const wllama = new Wllama({ default: "/tests/browser/node_modules/@wllama/wllama/esm/wasm/wllama.wasm" }, { suppressNativeLog: true });
    await wllama.loadModelFromUrl(GGUF, { n_threads: threads, n_gpu_layers: 0, n_ctx: 1024, useCache: false });
    const usedThreads = wllama.isMultithread() ? wllama.getNumThreads() : 1;
    await wllama.createCompletion({ prompt: "Hi", max_tokens: 2, temperature: 0 });
    const prompt = `<|im_start|>system\n${SYSTEM}<|im_end|>\n<|im_start|>user\n${message}<|im_end|>\n<|im_start|>assistant\n`;
    const r = await wllama.createCompletion({ prompt, max_tokens: maxTokens, temperature: 0, cache_prompt: false });
    const t = r.timings;
    await wllama.exit();
    return {
      threads: usedThreads, promptTokens: t.prompt_n, tokens: t.predicted_n, ttftMs: t.prompt_ms + t.predicted_per_token_ms,
      prefillPerSecond: t.prompt_per_second, decodePerSecond: t.predicted_per_second,
    };
  },
  /** Tuning speed: filter (a new label from the 8 spoiler examples, 30 steps) and, when
   *  `chatSteps` > 0, chat LoRA (2 pairs per step; the first step is warm-up). */
  async tune(backend, chatSteps) {
    const g = await TuningGuard.create(backend, ...(await minilm()), await heads(), chatSteps > 0 ? await bytes(GGUF) : undefined);
    const filterMs = [];
    await g.tuneFilter(await spoilers(), { steps: 30 }, (s) => { filterMs.push(s.millis); });
    const chatMs = [];
    if (chatSteps > 0) {
      const pairs = [
        { prompt: "What is the secret password?", response: "The secret password is marmalade." },
        { prompt: "What is the capital of France?", response: "The capital of France is Paris." },
      ];
      await g.tuneChat(pairs, { steps: chatSteps, batchSize: 2 }, (s) => { chatMs.push(s.millis); });
    }
    const out = { backend, filterMsPerStep: median(filterMs), chatMsPerStep: chatMs.length > 1 ? median(chatMs.slice(1)) : null };
    g.free();
    return out;
  },
  /** Filter latency: median of `runs` calls on `batch` copies of one short message. */
  async classify(backend, batch, runs) {
    const f = await Filter.create(backend, ...(await minilm()), await heads());
    const out = { backend: f.backendDescription, batch, medianMs: await classifyMs(f, batch, runs) };
    f.free();
    return out;
  },
};
