// Browser benchmark (./build.sh bench): in headless Chromium on this machine, the filter's
// classify latency and the chat model's prefill/decode speed on WebGPU and on the CPU (wasm),
// and the same chat figures for wllama (llama.cpp in wasm, npm @wllama/wllama, single thread)
// on the same GGUF, side by side, as ratios; tuning milliseconds per step (filter and chat).
// Prints a line per measurement; --json for machine-readable.
//
//   node scripts/bench-browser.mjs [--webgpu-tokens 4] [--tokens 64] [--skip-webgpu] [--json]
import { openBrowser, load } from "../tests/browser/browser.mjs";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const flag = (name) => process.argv.includes(name);
const TOKENS = arg("--tokens", 64);
// SwiftShader (a CPU rasteriser) runs WebGPU at well under 1 GFLOP/s: a short prompt and run prove the
// path and gives its order of magnitude; a real GPU would take the full length.
const GPU_TOKENS = arg("--webgpu-tokens", 4);
const MESSAGE = "Write a long, detailed essay about the history of the printing press in Europe, "
  + "covering Gutenberg, the spread of print shops, the books they made, and how printing changed "
  + "religion, science and politics over the following three centuries.";

const b = await openBrowser();
const rows = [];
const log = (s) => { if (!flag("--json")) console.log(s); };
const show = (r) => {
  if (r.what === "chat") {
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
  const outside = b.requests.filter((u) => !u.startsWith(b.url) && !u.startsWith(`blob:${b.url}`));
  if (outside.length) throw new Error(`requests left 127.0.0.1: ${outside.join(", ")}`);
  if (flag("--json")) console.log(JSON.stringify(rows, null, 1));
} finally {
  await b.close();
}
