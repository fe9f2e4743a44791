// Foundation: the wasm module loads in headless Chromium, sees a WebGPU adapter (SwiftShader),
// computes the same numbers on WebGPU and on the CPU backend as an independent JS version, and
// tokenizes exactly as the Python `tokenizers` reference (tests/reference) does.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { usePage } from "./browser.mjs";

const ref = (name) => JSON.parse(readFileSync(new URL(`../reference/${name}`, import.meta.url), "utf8"));
const cargoVersion = readFileSync(new URL("../../Cargo.toml", import.meta.url), "utf8").match(/^version = "(.+)"/m)[1];

/** probe_computation (src/backend.rs) in plain JS doubles. */
function expectedProbe() {
  const a = (i, k) => Math.sin(0.37 * i + 0.11 * k);
  const b = (k, j) => Math.cos(0.23 * k - 0.41 * j);
  const probs = [], sums = [];
  for (let i = 0; i < 4; i++) {
    const logits = [0, 1, 2].map((j) => [...Array(8).keys()].reduce((s, k) => s + a(i, k) * b(k, j), 0) + 0.5);
    const m = Math.max(...logits);
    const e = logits.map((l) => Math.exp(l - m));
    const total = e.reduce((s, x) => s + x, 0);
    const p = e.map((x) => x / total);
    probs.push(...p);
    sums.push(p.reduce((s, x) => s + x * x, 0));
  }
  return [...probs, ...sums];
}

function assertClose(got, want, label) {
  assert.equal(got.length, want.length, label);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) < 1e-5, `${label}[${i}]: ${g} vs ${want[i]}`));
}

const b = usePage("foundation");

test("the module loads and reports its version", async () => {
  assert.equal(await b.page.evaluate(() => window.webguard.version()), cargoVersion);
  assert.equal(await b.page.evaluate(() => crossOriginIsolated), true, "COOP/COEP headers give isolation");
});

test("WebGPU: an adapter exists and the GPU backend computes the right numbers", async () => {
  const info = await b.page.evaluate(() => window.webguard.adapterInfo());
  assert.ok(info, "navigator.gpu.requestAdapter() gave an adapter");
  const r = await b.page.evaluate(async () => {
    const r = await window.webguard.probeBackend("webgpu");
    return { ...r, check: Array.from(r.check) };
  });
  assert.equal(r.kind, "webgpu", JSON.stringify(r));
  assert.match(r.adapter, /swiftshader/i, "the adapter is named");
  console.log(`# webgpu backend: ${r.description}; adapter info ${JSON.stringify(info)}`);
  assertClose(r.check, expectedProbe(), "webgpu");
});

test("CPU backend in wasm computes the same numbers", async () => {
  const r = await b.page.evaluate(async () => {
    const r = await window.webguard.probeBackend("cpu");
    return { ...r, check: Array.from(r.check) };
  });
  assert.equal(r.kind, "cpu");
  assertClose(r.check, expectedProbe(), "cpu");
});

for (const [which, file] of [["smollm2", "tokens_smollm2.json"], ["minilm", "tokens_minilm.json"]]) {
  test(`${which} tokenizer in the browser matches Python tokenizers on the whole corpus`, async () => {
    const corpus = ref("tokenizer_corpus.json");
    const want = ref(file);
    const got = await b.page.evaluate(([w, texts]) => window.webguard.tokenizeAll(w, texts), [which, corpus]);
    assert.equal(got.length, corpus.length);
    got.forEach((row, i) => {
      assert.deepEqual(row.ids, want[i].ids, `ids of ${JSON.stringify(corpus[i])}`);
      assert.equal(row.decoded, want[i].decoded, `decode of ${JSON.stringify(corpus[i])}`);
    });
  });
}

test("bad input gives JS Errors with readable messages, and the module keeps working", async () => {
  const errors = await b.page.evaluate(() => window.webguard.tryBadInput());
  for (const e of errors) assert.match(e, /: Error: \S/, e);
  assert.match(errors[0], /GGUF|magic|truncated/i);
  assert.match(errors[2], /tpu/);
  assert.equal(await b.page.evaluate(() => window.webguard.version()), cargoVersion);
});

test("no page errors and no panics", () => {
  // With burn's autotune on, a candidate matmul kernel failed WebGPU validation on SwiftShader
  // and cubecl's error callback panicked (cubecl#1641); autotune is now native-only.
  const errors = b.logs.filter((l) => l.startsWith("pageerror") || l.includes("panicked at"));
  assert.deepEqual(errors, []);
});

test("no request left 127.0.0.1", () => {
  const outside = b.requests.filter((u) => !u.startsWith(b.url) && !u.startsWith("data:") && !u.startsWith("blob:"));
  assert.deepEqual(outside, []);
});
