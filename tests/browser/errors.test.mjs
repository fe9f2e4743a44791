// Errors through the whole stack in a real browser: the wasm module names each error by its
// kind (src/error.rs, ErrorKind), the worker carries the name across postMessage and guard.js
// rejects with an Error of the same name, which is what the worker's GPU-to-CPU fallback and
// callers branch on. The messages stay the readable ones. Also the chat model's probe as a
// page gets it: shipped and loaded by default, judging before generation, off with
// `chatProbe: false`, a bad probe file a ModelFileError at create time; and the safety
// adapters that come with it.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { usePage } from "./browser.mjs";

/** The `format` in the shipped probe file's safetensors header. */
function shippedProbeFormat() {
  const bytes = readFileSync(new URL("../../assets/chat-probe.safetensors", import.meta.url));
  const length = Number(bytes.readBigUInt64LE(0));
  return JSON.parse(bytes.subarray(8, 8 + length).toString("utf8")).__metadata__.format;
}

const b = usePage("guard", { webgpu: false });

test("load failures: IoError for a download, ModelFileError for a file, BackendError for the GPU", async () => {
  const r = await b.page.evaluate(() => window.webguard.loadErrors());
  console.log(`# ${JSON.stringify(r)}`);
  assert.match(r.missingChat, /^IoError: could not download chat model .*HTTP 404/);
  assert.match(r.notAModel, /^ModelFileError: the chat model could not be loaded: .*config\.json is not the file expected \(sha256/);
  assert.match(r.notAModelUnchecked, /^ModelFileError: the chat model could not be loaded: /);
  assert.doesNotMatch(r.notAModelUnchecked, /not the file expected/);
  assert.match(r.noGpu, /^BackendError: .*GPU/);
});

test("call failures: InvalidInputError for bad arguments, CancelledError for an abort", async () => {
  const r = await b.page.evaluate(() => window.webguard.callErrors());
  console.log(`# ${JSON.stringify(r)}`);
  assert.match(r.notTexts, /^InvalidInputError: text 0 is not a string/);
  assert.match(r.noChat, /^InvalidInputError: this Guard was created without a chat model/);
  assert.match(r.unknownLabel, /^InvalidInputError: unknown label "spam"/);
  assert.match(r.unknownTuneOption, /^InvalidInputError: tuning options: unknown option "stepz" \(known: steps, learningRate, seed\)/);
  assert.match(r.badSteps, /^InvalidInputError: .*steps is 0/);
  assert.equal(r.isolated, true);
  assert.match(r.cancelled, /^CancelledError: .*tuning stopped at step/);
  assert.equal(r.verdicts.length, 1);
  assert.equal(r.verdicts[0].flagged, false);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});

test("chat probe: on by default, blocks a harmful request by itself; chatProbe: false turns it off", async () => {
  const r = await b.page.evaluate(() => window.webguard.chatProbe());
  console.log(`# ${JSON.stringify(r)}`);
  assert.ok(r.probe && r.probe.threshold > 0 && r.probe.threshold < 1 && r.probe.layers.length > 0, JSON.stringify(r.probe));
  // Where it reads the prompt, as its file's format says (src/models/probe.rs).
  const pooling = { "webguard-chat-probe/4": "user-message", "webguard-chat-probe/5": "both" };
  assert.equal(r.probe.pooling, pooling[shippedProbeFormat()] ?? "last-token");
  // Blocked before generation (by the filter, the chat model, or both).
  assert.equal(r.bomb.blocked, true);
  assert.equal(r.bomb.tokens, 0);
  // With the filter's labels all allowed, the chat model's own judgement still blocks it.
  assert.equal(r.bombJudgeOnly.blocked, true, JSON.stringify(r.bombJudgeOnly));
  assert.deepEqual(r.bombJudgeOnly.filterBlocked, []);
  assert.match(r.bombJudgeOnly.reason, /judged harmful by the chat model/);
  assert.ok(r.bombJudgeOnly.chatJudge >= r.probe.threshold, JSON.stringify(r.bombJudgeOnly));
  assert.equal(r.bombJudgeOnly.tokens, 0);
  // An ordinary question is judged (a number) and answered.
  assert.equal(typeof r.france.chatJudge, "number");
  assert.ok(r.france.chatJudge < r.probe.threshold, JSON.stringify(r.france));
  assert.equal(r.france.blocked, false);
  assert.ok(r.france.tokens > 0);
  // Turned off: no probe, no judgement.
  assert.equal(r.offProbe, null);
  assert.equal(r.offFrance.chatJudge, null);
  assert.equal(r.offFrance.blocked, false);
  assert.match(r.notAProbe, /^ModelFileError: the chat probe could not be loaded: .*not a webguard chat probe/);
  assert.match(r.withoutChat, /^TypeError: chatProbe was given without a chat model/);
  // The safety adapters come with the probe by default, answering from a score below its
  // threshold; an ordinary question scores under it and is answered by the model as it is.
  assert.ok(r.probe.safetyAdaptersFrom > 0 && r.probe.safetyAdaptersFrom < r.probe.threshold, JSON.stringify(r.probe));
  assert.ok(r.withAdaptersProbe.safetyAdaptersFrom > 0 && r.withAdaptersProbe.safetyAdaptersFrom < r.withAdaptersProbe.threshold, JSON.stringify(r.withAdaptersProbe));
  assert.equal(r.france.safetyAdapters, false);
  assert.equal(r.noAdaptersProbe.safetyAdaptersFrom, null);
  assert.equal(r.noAdaptersProbe.threshold, r.probe.threshold);
  assert.match(r.notAdapters, /^ModelFileError: the safety adapters could not be loaded: /);
  assert.match(r.adaptersWithoutProbe, /^TypeError: safetyAdapters need the chat model and its probe/);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
