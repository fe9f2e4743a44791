// What each page downloads, file by file: raw, gzip (level 9) and brotli (quality 11) bytes of
// the package's files and the models, and the totals of the three kinds of page (README, "What
// a page downloads"). Run by `./build.sh build` after pkg/ is made.
//
//   node scripts/sizes.mjs [--pkg pkg] [--models models] [--json] [--precompress]
//
// --precompress writes FILE.br beside each compressible file of pkg/ (the brotli bytes measured
// here), which scripts/serve.mjs sends to browsers that accept brotli.
//
// A page's first visit is its code (guard.js, the worker, one wasm module and its glue) plus
// the model files it names; a repeat visit takes the models from the Cache API. The budget
// (issue 18) is on the code: at most 4 MB gzipped for a moderation-only page and for a chat
// page that does not tune. The tuning module is fetched only when a page first tunes. A cross-
// origin isolated page takes the threaded module instead of webguard.js (issue 15; the same
// budget), and its helper workers compile that same download.
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const PKG = arg("--pkg", "pkg");
const MODELS = arg("--models", process.env.WEBGUARD_MODELS ?? "models");
export const CODE_BUDGET_GZIP = 4_000_000;

const CODE = ["guard.js", "guard-worker.js", "webguard.js", "webguard_bg.wasm"];
const TUNING = ["webguard_tune.js", "webguard_tune_bg.wasm"];
const THREADED = ["guard.js", "guard-worker.js", "guard-thread.js", "webguard_threads.js", "webguard_threads_bg.wasm"];
const FILTER = ["all-MiniLM-L6-v2.int8.safetensors", "filter-heads.safetensors",
  "all-MiniLM-L6-v2/tokenizer.json", "all-MiniLM-L6-v2/config.json"];
const CHAT = ["SmolLM2-135M-Instruct.Q4_1.gguf", "chat-probe.safetensors", "chat-safety-adapters.safetensors"];

function where(name) {
  for (const dir of [PKG, MODELS]) {
    const path = join(dir, name);
    if (existsSync(path)) return path;
  }
  throw new Error(`${name} is in neither ${PKG} nor ${MODELS}: run ./build.sh build`);
}

/** Sizes of one file; compressed sizes only for what a server would compress (code and
 *  text: model weights barely shrink, and compressing a 100 MB file at brotli 11 takes
 *  minutes). */
function measure(name) {
  const path = where(name);
  const raw = statSync(path).size;
  const compressible = /\.(js|wasm|json)$/.test(name);
  if (!compressible) return { name, raw, gzip: raw, brotli: raw };
  const bytes = readFileSync(path);
  const brotli = brotliCompressSync(bytes, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: raw },
  });
  if (process.argv.includes("--precompress") && path.startsWith(join(PKG, "/"))) writeFileSync(`${path}.br`, brotli);
  return { name, raw, gzip: gzipSync(bytes, { level: 9 }).length, brotli: brotli.length };
}

const files = Object.fromEntries([...new Set([...CODE, ...TUNING, ...THREADED, ...FILTER, ...CHAT])].map((n) => [n, measure(n)]));
const sum = (names) => names.reduce((t, n) => ({
  raw: t.raw + files[n].raw, gzip: t.gzip + files[n].gzip, brotli: t.brotli + files[n].brotli,
}), { raw: 0, gzip: 0, brotli: 0 });
const pages = {
  "moderation only: code": sum(CODE),
  "moderation only: code + filter models": sum([...CODE, ...FILTER]),
  "chat, no tuning: code": sum(CODE),
  "chat, no tuning: code + models": sum([...CODE, ...FILTER, ...CHAT]),
  "first tuning call adds": sum(TUNING),
  "cross-origin isolated (threads): code": sum(THREADED),
};

const mb = (n) => (n / 1e6).toFixed(2);
if (process.argv.includes("--json")) {
  console.log(JSON.stringify({ files, pages, codeBudgetGzip: CODE_BUDGET_GZIP }, null, 1));
} else {
  const rows = [
    "| file or page | raw MB | gzip MB | brotli MB |",
    "|---|---:|---:|---:|",
    ...Object.values(files).map((f) => `| ${f.name} | ${mb(f.raw)} | ${mb(f.gzip)} | ${mb(f.brotli)} |`),
    ...Object.entries(pages).map(([p, t]) => `| **${p}** | ${mb(t.raw)} | ${mb(t.gzip)} | ${mb(t.brotli)} |`),
  ];
  console.log(rows.join("\n"));
}
const code = Math.max(pages["moderation only: code"].gzip, pages["cross-origin isolated (threads): code"].gzip);
if (code > CODE_BUDGET_GZIP) {
  console.error(`the code a page loads first is ${mb(code)} MB gzipped, over the ${mb(CODE_BUDGET_GZIP)} MB budget`);
  process.exit(1);
}
