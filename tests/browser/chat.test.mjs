// The chat model in the browser: greedy tokens from the wasm build on WebGPU (SwiftShader, a
// short generation) and on the CPU backend equal the numpy float64 reference's
// (tests/reference/llama_smollm2.json, which the native build matches too); streaming,
// cancellation and bad input.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { usePage } from "./browser.mjs";

const ref = JSON.parse(readFileSync(new URL("../reference/llama_smollm2.json", import.meta.url), "utf8"));
const france = ref.cases[0];

const b = usePage("chat");

test("CPU backend in wasm: greedy answer equals the reference, streamed", async () => {
  const r = await b.page.evaluate((p) => window.webguard.generate("cpu", p, 32), france.prompt);
  assert.equal(r.backend, "cpu");
  assert.deepEqual(r.tokens, france.greedy.filter((t) => t !== 2 && t !== 0), r.text);
  assert.equal(r.text, "The capital of France is Paris.");
  assert.equal(r.pieces.join(""), r.text);
  assert.equal(r.stopReason, "endOfTurn");
});

test("WebGPU (SwiftShader): the same first greedy tokens", async () => {
  const r = await b.page.evaluate((p) => window.webguard.generate("webgpu", p, 4), france.prompt);
  assert.equal(r.backend, "webgpu", r.description);
  console.log(`# ${r.description}: ${JSON.stringify(r.text)}`);
  assert.deepEqual(r.tokens, france.greedy.slice(0, 4));
  assert.equal(r.stopReason, "maxTokens");
});

test("a callback returning false cancels; bad input is a JS error", async () => {
  const c = await b.page.evaluate(() => window.webguard.cancelAfterFirst("cpu"));
  assert.deepEqual(c, { n: 1, stopReason: "cancelled" });
  const r = await b.page.evaluate(() => window.webguard.badInput("cpu"));
  console.log(`# ${JSON.stringify(r)}`);
  assert.match(r.noMessages, /^Error: .*no messages/);
  assert.match(r.unknownRole, /^Error: .*unknown role "wizard"/);
  assert.match(r.notMessages, /^Error: messages must be an array/);
  assert.match(r.badTemperature, /^Error: .*temperature/);
  assert.match(r.badTopP, /^Error: .*top_p/);
  assert.match(r.unknownOption, /^Error: options: unknown option "temprature"/);
  assert.match(r.garbageGguf, /^Error: /);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
