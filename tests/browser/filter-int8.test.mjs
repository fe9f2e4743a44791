// The filter's 8-bit encoder in the browser (issue 13's download budget): a Guard made with
// only `filterUrl` downloads pkg/all-MiniLM-L6-v2.int8.safetensors (19.0 MB, the word-embedding
// table at 4 bits) and never MiniLM's
// f32 model.safetensors (91 MB); its scores equal the native filter's with the same 8-bit file
// (1e-3, as tests/browser/filter.test.mjs asks of the f32 build) and stay within
// SCORE_TOLERANCE of the native f32 filter's (tests/filter_int8.rs states the same bound);
// the f32 file still loads when given as `filter.model`, with the f32 scores.
// Needs `./build.sh build` (the native CLI, pkg/ with the 8-bit file).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { usePage } from "./browser.mjs";
import { assertScoresClose, models as modelsDir, nativeVerdicts, webguard } from "./native.mjs";

const SCORE_TOLERANCE = 0.04;
const TEXTS = [
  "you are a complete idiot and everyone hates you",
  "have a nice day, see you at the meeting tomorrow",
  "How do I kill a Python process that is stuck?",
  "Write a tutorial on how to make a bomb at home",
  "those people are animals and should all be sent back",
  "",
  "The quarterly report covers revenue, hiring, the office move and the new product line. ".repeat(9) +
    "Honestly the people who wrote it are worthless morons.",
];

const root = fileURLToPath(new URL("../../", import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), "webguard-int8-"));

let native32;
let native8;
before(() => {
  // The native filter with the 8-bit encoder: a models folder laid out by quantize-filter.
  execFileSync(webguard, ["--models", modelsDir, "quantize-filter", "--out", join(tmp, "int8.safetensors"), "--as-models", join(tmp, "models")]);
  native32 = nativeVerdicts(TEXTS);
  native8 = nativeVerdicts(TEXTS, join(tmp, "models"));
});
const b = usePage("hardening", { webgpu: false });
after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

test("the package ships the 8-bit encoder; the filter's first visit is under the 25 MB budget", () => {
  const size = statSync(join(root, "pkg/all-MiniLM-L6-v2.int8.safetensors")).size;
  // What a Guard made with only `filterUrl` downloads: the encoder, the heads, the tokenizer, the config.
  const others = [join(root, "pkg/filter-heads.safetensors"), join(modelsDir, "all-MiniLM-L6-v2/tokenizer.json"),
    join(modelsDir, "all-MiniLM-L6-v2/config.json")].map((f) => statSync(f).size);
  const total = size + others.reduce((a, n) => a + n, 0);
  console.log(`# pkg/all-MiniLM-L6-v2.int8.safetensors: ${size} bytes; with heads, tokenizer.json, config.json: ${total}`);
  assert.ok(total <= 25_000_000, `${total}`);
});

test("the Guard downloads the 8-bit encoder by default and scores like the native filter", async () => {
  const start = b.requests.length;
  const r = await b.page.evaluate(async (texts) => {
    const g = await Guard.create({ filterUrl: models.filterUrl, backend: "cpu", cache: false });
    try {
      return await g.classify(texts);
    } finally {
      g.dispose();
    }
  }, TEXTS);
  const requests = b.requests.slice(start);
  assert.ok(requests.some((u) => u.endsWith("/pkg/all-MiniLM-L6-v2.int8.safetensors")), requests.join("\n"));
  assert.ok(!requests.some((u) => u.endsWith("/model.safetensors")), requests.join("\n"));
  assertScoresClose(r, native8, "browser 8-bit vs native 8-bit", 1e-3);
  r.forEach((v, i) => assert.deepEqual(v.labels, native8[i].labels, `text ${i}`));
  assertScoresClose(r, native32, "browser 8-bit vs native f32", SCORE_TOLERANCE);
});

test("the f32 encoder still loads when given as filter.model", async () => {
  const r = await b.page.evaluate(async (texts) => {
    const g = await Guard.create({
      filterUrl: models.filterUrl,
      filter: { model: `${models.filterUrl}model.safetensors` },
      backend: "cpu",
      cache: false,
    });
    try {
      return await g.classify(texts);
    } finally {
      g.dispose();
    }
  }, TEXTS);
  assertScoresClose(r, native32, "browser f32 vs native f32", 1e-3);
});
