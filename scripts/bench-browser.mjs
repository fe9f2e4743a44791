// Browser benchmark (./build.sh bench): in headless Chromium on this machine, the filter's
// classify latency and the chat model's prefill/decode speed on WebGPU and on the CPU (wasm),
// and the same chat figures for wllama (llama.cpp in wasm, npm @wllama/wllama, single thread)
// on the same GGUF, side by side, as ratios; a moderated chat turn (the wasm Guard's chat, as
// pkg/guard.js's worker runs it) next to the same answer unmoderated, on the CPU (wasm), as a
// ratio (issue 13's budget: at most 1.2); tuning milliseconds per step (filter and chat).
// Prints a line per measurement; --json for machine-readable; --guard-only runs only the
// moderated-turn comparison. --threads 1,2 (issue 15) runs only the CPU chat in a worker, once
// per count and round (--thread-runs, alternating): 1 is the single-threaded module
// (webguard.js), N > 1 the threaded one (webguard_threads.js, N threads), "1t" the threaded
// module on one thread (the cost of building with atomics); wllama runs in the same rounds
// with each numeric count (its pthreads build for N > 1; --no-wllama skips it); medians and
// ratios side by side; then classify latency for 1 and 32 texts by the same thread counts (the
// filter as the Guard's worker loads it, in a worker, alternating rounds).
//
//   node scripts/bench-browser.mjs [--webgpu-tokens 4] [--tokens 64] [--guard-tokens 128]
//     [--guard-runs 3] [--guard-only] [--skip-webgpu] [--threads 1,2 [--thread-runs 3] [--no-wllama]]
//     [--message-repeat 1] [--json]
import { openBrowser, load } from "../tests/browser/browser.mjs";
import { ESSAY } from "../tests/browser/long-prompt.mjs";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const flag = (name) => process.argv.includes(name);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const TOKENS = arg("--tokens", 64);
// SwiftShader (a CPU rasteriser) runs WebGPU at well under 1 GFLOP/s: a short prompt and run prove the
// path and gives its order of magnitude; a real GPU would take the full length.
const GPU_TOKENS = arg("--webgpu-tokens", 4);
// The moderated-turn comparison: tokens per answer (the essay below takes them all) and
// alternating runs of each (medians).
const GUARD_TOKENS = arg("--guard-tokens", 128);
const GUARD_RUNS = arg("--guard-runs", 3);
// --message-repeat K: the request K times over (about 44 tokens each), for prefill on long
// prompts (the CPU path's limits on its tiles and host loops).
const MESSAGE = Array(arg("--message-repeat", 1)).fill(ESSAY).join(" ");

const b = await openBrowser();
const rows = [];
const log = (s) => { if (!flag("--json")) console.log(s); };
const show = (r) => {
  if (r.what === "guard") {
    const line = (what, ms, perS, firstMs) => `${what} ${(ms / 1000).toFixed(2)} s, ${perS.toFixed(2)} tokens/s (${(ms / r.tokens).toFixed(1)} ms/token), first text after ${firstMs.toFixed(0)} ms`;
    log(`  moderated turn ${r.backend}: ${r.tokens} tokens, median of ${r.runs} alternating runs each`);
    log(`    ${line("unmoderated (Chat.generate):", r.unmoderatedMs, r.unmoderatedPerSecond, r.unmoderatedFirstMs)}`);
    log(`    ${line("moderated (Guard.chat):     ", r.moderatedMs, r.moderatedPerSecond, r.moderatedFirstMs)}`);
    log(`    ratio moderated / unmoderated: ${r.ratio.toFixed(3)} (median of the pairs' ${r.ratios.map((x) => x.toFixed(3)).join(", ")}; budget 1.20)`);
  } else if (r.what === "chat") {
    log(`  chat ${r.who} ${r.backend ?? "cpu (wasm)"}: prompt ${r.promptTokens} tokens, prefill ${r.prefillPerSecond.toFixed(1)} tokens/s, time to first token ${r.ttftMs.toFixed(0)} ms, decode ${r.decodePerSecond.toFixed(2)} tokens/s (${r.tokens} tokens)`);
  } else {
    log(`  classify ${r.backend}: ${r.batch} text(s) in ${r.medianMs.toFixed(0)} ms (median of ${r.runs})`);
  }
};
const add = (r) => { rows.push(r); show(r); };
try {
  await load(b, "bench");
  const ev = (fn, ...args) => b.page.evaluate(([f, a]) => window.bench[f](...a), [fn, args]);
  log(`browser benchmark: headless Chromium ${b.page.context().browser()?.version() ?? ""}, ${TOKENS} new tokens (WebGPU: ${GPU_TOKENS})`);
  const threadsList = process.argv.includes("--threads") ? process.argv[process.argv.indexOf("--threads") + 1].split(",") : null;
  if (threadsList) {
    log(`  chat cpu (wasm) in a worker, by threads: ${TOKENS} new tokens, ${arg("--thread-runs", 3)} alternating rounds; crossOriginIsolated ${await b.page.evaluate(() => self.crossOriginIsolated)}`);
    // wllama with the same thread counts (its pthreads build; "1t" has no counterpart), run
    // in the same rounds so load from elsewhere falls on both (--no-wllama skips it).
    const peerCounts = flag("--no-wllama") ? [] : [...new Set(threadsList.filter((t) => /^\d+$/.test(t)))];
    const runs = Object.fromEntries(threadsList.map((t) => [t, []]));
    const peerRuns = Object.fromEntries(peerCounts.map((t) => [t, []]));
    for (let round = 0; round < arg("--thread-runs", 3); round++) {
      for (const t of threadsList) {
        const r = await ev("workerChat", t === "1" ? "single" : "threads", Number.parseInt(t, 10), MESSAGE, TOKENS);
        runs[t].push(r);
        log(`    round ${round + 1}, ${t === "1" ? "1 thread (webguard.js)" : `${r.threads} thread(s) (webguard_threads.js)`}: prompt ${r.promptTokens} tokens, prefill ${r.prefillPerSecond.toFixed(1)} tokens/s, decode ${r.decodePerSecond.toFixed(2)} tokens/s (${r.tokens} tokens)${r.module === "threads" ? `; helpers joined ${r.joined} products` : ""}`);
      }
      for (const t of peerCounts) {
        const r = await ev("wllamaChat", MESSAGE, TOKENS, Number.parseInt(t, 10));
        if (r.threads !== Number.parseInt(t, 10)) throw new Error(`wllama ran on ${r.threads} thread(s), asked for ${t}`);
        peerRuns[t].push(r);
        log(`    round ${round + 1}, wllama ${t} thread(s): prompt ${r.promptTokens} tokens, prefill ${r.prefillPerSecond.toFixed(1)} tokens/s, decode ${r.decodePerSecond.toFixed(2)} tokens/s (${r.tokens} tokens)`);
      }
    }
    const medians = (list) => ({ prefillPerSecond: median(list.map((r) => r.prefillPerSecond)), decodePerSecond: median(list.map((r) => r.decodePerSecond)) });
    for (const t of threadsList) {
      const row = { what: "threads", threads: t, module: runs[t][0].module, ...medians(runs[t]), runs: runs[t] };
      rows.push(row);
      log(`  median ${t}: prefill ${row.prefillPerSecond.toFixed(1)} tokens/s, decode ${row.decodePerSecond.toFixed(2)} tokens/s`);
    }
    for (const t of peerCounts) {
      const peer = { what: "threads", who: "wllama", threads: t, ...medians(peerRuns[t]), runs: peerRuns[t] };
      rows.push(peer);
      const ours = rows.find((r) => r.what === "threads" && r.threads === t && !r.who);
      log(`  median wllama ${t}: prefill ${peer.prefillPerSecond.toFixed(1)} tokens/s, decode ${peer.decodePerSecond.toFixed(2)} tokens/s; ratio webguard / wllama at ${t} thread(s): prefill ${(ours.prefillPerSecond / peer.prefillPerSecond).toFixed(2)}, decode ${(ours.decodePerSecond / peer.decodePerSecond).toFixed(2)}`);
    }
    // Classify latency by threads (the filter as the Guard's worker loads it), same rounds.
    const batches = [1, 32];
    const cls = Object.fromEntries(threadsList.map((t) => [t, []]));
    for (let round = 0; round < arg("--thread-runs", 3); round++) {
      for (const t of threadsList) {
        const r = await ev("workerClassify", t === "1" ? "single" : "threads", Number.parseInt(t, 10), batches, 3);
        cls[t].push(r);
        log(`    round ${round + 1}, classify, ${t === "1" ? "1 thread (webguard.js)" : `${r.threads} thread(s) (webguard_threads.js)`}: ${batches.map((n) => `${n} text(s) ${r.msByBatch[n].toFixed(0)} ms`).join(", ")}${r.module === "threads" ? `; helpers joined ${r.joined} jobs` : ""}`);
      }
    }
    for (const t of threadsList) {
      const ms = Object.fromEntries(batches.map((n) => [n, median(cls[t].map((r) => r.msByBatch[n]))]));
      rows.push({ what: "classify-threads", threads: t, module: cls[t][0].module, msByBatch: ms, runs: cls[t] });
      log(`  median classify ${t}: ${batches.map((n) => `${n} text(s) ${ms[n].toFixed(0)} ms`).join(", ")}`);
    }
  } else {
    add({ what: "guard", ...(await ev("guardChat", MESSAGE, GUARD_TOKENS, GUARD_RUNS)) });
  }
  if (!flag("--guard-only") && !threadsList) {
    const cpu = await ev("webguardChat", "cpu", MESSAGE, TOKENS);
    add({ what: "chat", who: "webguard", ...cpu });
    const wl = await ev("wllamaChat", MESSAGE, TOKENS);
    add({ what: "chat", who: "wllama 1 thread", ...wl });
    log(`    ratio webguard cpu / wllama: prefill ${(cpu.prefillPerSecond / wl.prefillPerSecond).toFixed(2)}, decode ${(cpu.decodePerSecond / wl.decodePerSecond).toFixed(2)}`);
    for (const batch of [1, 32]) add({ what: "classify", who: "webguard", runs: 5, ...(await ev("classify", "cpu", batch, 5)) });
    const tuneCpu = await ev("tune", "cpu", 4);
    rows.push({ what: "tune", ...tuneCpu });
    log(`  tune on cpu (wasm): filter ${tuneCpu.filterMsPerStep.toFixed(1)} ms/step (a new label, 8 examples); chat LoRA ${tuneCpu.chatMsPerStep.toFixed(0)} ms/step (2 pairs of ~45 tokens, rank 8 on q,v)`);
    if (!flag("--skip-webgpu")) {
      // SwiftShader: a short prompt, few tokens, small batches.
      add({ what: "chat", who: "webguard", ...(await ev("webguardChat", "webgpu", "What is the capital of France?", GPU_TOKENS)) });
      for (const batch of [1, 8]) add({ what: "classify", who: "webguard", runs: 2, ...(await ev("classify", "webgpu", batch, 2)) });
      const tuneGpu = await ev("tune", "webgpu", 0);
      rows.push({ what: "tune", ...tuneGpu });
      log(`  tune on webgpu: filter ${tuneGpu.filterMsPerStep.toFixed(1)} ms/step (chat tuning not run on SwiftShader)`);
    }
  }
  const outside = b.requests.filter((u) => !u.startsWith(b.url) && !u.startsWith(`blob:${b.url}`));
  if (outside.length) throw new Error(`requests left 127.0.0.1: ${outside.join(", ")}`);
  if (flag("--json")) console.log(JSON.stringify(rows, null, 1));
} finally {
  await b.close();
}
