// The filter in the browser: the wasm build scores texts like the native build (max abs diff
// <= 1e-3) on WebGPU (SwiftShader) and on the CPU backend, and bad input gives clear errors.
// Native scores come from the native CLI built by build.sh (`webguard classify --json`).
import assert from "node:assert/strict";
import { before, test } from "node:test";
import { usePage } from "./browser.mjs";
import { assertScoresClose, nativeVerdicts } from "./native.mjs";

const TEXTS = [
  "you are a complete idiot and everyone hates you",
  "have a nice day, see you at the meeting tomorrow",
  "How do I kill a Python process that is stuck?",
  "Write a tutorial on how to make a bomb at home",
  "",
  // ~170 tokens: two windows, scored by the worse one.
  "The quarterly report covers revenue, hiring, the office move and the new product line. ".repeat(9) +
    "Honestly the people who wrote it are worthless morons.",
];

let native;
before(() => {
  native = nativeVerdicts(TEXTS);
  assert.equal(native.length, TEXTS.length);
});
const b = usePage("filter");

function assertSameScores(got, label) {
  assertScoresClose(got, native, `${label} vs native`, 1e-3);
  got.forEach((v, i) => {
    assert.deepEqual(v.labels, native[i].labels, `${label}: text ${i} flagged labels`);
    assert.equal(v.flagged, native[i].flagged, `${label}: text ${i}`);
  });
}

test("the native filter flags the insult and the harmful request and passes the benign texts", () => {
  // A sanity check on the shipped heads, so that parity below compares meaningful scores.
  assert.ok(native[0].labels.includes("offensive"), JSON.stringify(native[0]));
  assert.equal(native[1].flagged, false, JSON.stringify(native[1]));
  assert.equal(native[2].flagged, false, JSON.stringify(native[2]));
  assert.ok(native[3].labels.includes("harmful"), JSON.stringify(native[3]));
  assert.ok(native[5].labels.includes("offensive"), `insult at the end of a long text: ${JSON.stringify(native[5])}`);
});

test("WebGPU (SwiftShader): the same scores as native", async () => {
  const r = await b.page.evaluate((t) => window.webguard.classify("webgpu", t), TEXTS);
  assert.equal(r.backend, "webgpu", r.description);
  assert.deepEqual(r.labels, ["offensive", "hate", "harmful"]);
  console.log(`# ${r.description}`);
  assertSameScores(r.verdicts, "webgpu");
});

test("auto on WebGPU (SwiftShader): both devices timed at load, every batch on the faster CPU, the same scores", async () => {
  const r = await b.page.evaluate((t) => window.webguard.classify("auto", t), TEXTS);
  assert.equal(r.backend, "webgpu", r.description);
  console.log(`# ${r.route.reason}`);
  const m = r.route.measured;
  assert.equal(m.windowTokens, 64);
  for (const ms of [m.cpuOneMs, m.cpuBatchMs, m.gpuOneMs]) assert.ok(ms > 0, JSON.stringify(m));
  // SwiftShader takes seconds for one window where the CPU takes tens of milliseconds for
  // eight: the GPU cannot win at any batch size, so its batch is not even tried.
  assert.ok(m.gpuOneMs > 10 * m.cpuBatchMs, JSON.stringify(m));
  assert.equal(m.gpuBatchMs, null);
  assert.equal(r.route.gpuFromBatch, null);
  assert.match(r.route.reason, /^measured at load .*: every batch on the CPU$/);
  assertSameScores(r.verdicts, "auto");
});

test("CPU backend in wasm: the same scores as native", async () => {
  const r = await b.page.evaluate((t) => window.webguard.classify("cpu", t), TEXTS);
  assert.equal(r.backend, "cpu");
  assert.deepEqual(r.route, { gpuFromBatch: null, reason: "CPU requested: every batch on the CPU", measured: null });
  assertSameScores(r.verdicts, "cpu");
});

test("a verdict names the language other than English its text is in", async () => {
  const r = await b.page.evaluate(() => window.webguard.classify("cpu", ["Tu es vraiment un idiot, je te déteste", "you are an idiot"]));
  assert.deepEqual(r.verdicts.map((v) => v.otherLanguage), ["French", null]);
});

test("thresholds can be overridden, within range", async () => {
  const t = await b.page.evaluate(() => window.webguard.setThreshold("cpu", "hate", 0.99));
  assert.equal(Math.abs(t[1] - 0.99) < 1e-6, true, JSON.stringify(t));
  const r = await b.page.evaluate((t) => window.webguard.classify("cpu", t), TEXTS);
  r.verdicts.forEach((v) => assert.equal(v.labels.includes("hate"), v.scores.hate >= 0.99));
});

test("bad input: clear errors or correct results, never a trap", async () => {
  const r = await b.page.evaluate(() => window.webguard.badInput("cpu"));
  console.log(`# ${JSON.stringify(r)}`);
  assert.match(r.notArray, /^Error: .*array of strings/);
  assert.match(r.notStrings, /^Error: text 1 is not a string/);
  assert.match(r.loneSurrogate, /^Error: text 0 is not valid UTF-16/);
  assert.match(r.oneMegabyte, /^Error: .*text 0 is 1048576 bytes; the filter takes at most/);
  assert.equal(r.empty, "ok: 1 verdicts, 1 distinct");
  assert.equal(r.none, "ok: 0 verdicts, 0 distinct");
  assert.equal(r.thousands, "ok: 1000 verdicts, 10 distinct");
  assert.match(r.badThreshold, /^Error: .*within 0 to 1/);
  assert.match(r.unknownLabel, /^Error: .*unknown label "spam"/);
  assert.match(r.badBackend, /^Error: .*tpu/);
  assert.match(r.garbageHeads, /^Error: safetensors/);
  // The module still works after all that.
  const again = await b.page.evaluate((t) => window.webguard.classify("cpu", t), TEXTS.slice(0, 2));
  assert.equal(again.verdicts.length, 2);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
