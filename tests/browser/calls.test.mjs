// A page's calls that go wrong without any error of the models' own (pages/calls.mjs): an
// argument the worker cannot receive must reject and leave nothing pending (the first tuning
// call waits for every pending call: one left behind froze the page), concurrent rule changes
// must all apply, callbacks and signals of the wrong type are refused, and cancelling works
// with and without cross-origin isolation (without it the worker cannot read a shared flag),
// also for a call still waiting and after dispose().
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { load, usePage, withoutIsolation } from "./browser.mjs";

const b = usePage("calls", { webgpu: false });

/** The page's answer, or "hung" when it has none in `seconds` (a frozen page never answers). */
const within = (seconds, evaluate) => Promise.race([evaluate, sleep(seconds * 1000, "hung", { ref: false })]);

test("an argument the worker cannot receive rejects with a TypeError and the next tuning call runs", async () => {
  const r = await within(240, b.page.evaluate(() => window.webguard.uncloneable()));
  console.log(`# ${JSON.stringify(r)}`);
  assert.notEqual(r, "hung", "the page froze");
  assert.match(r.classify, /^TypeError: classify: its arguments cannot be sent to the worker/);
  assert.match(r.importOptions, /^TypeError: importAdapters: its arguments cannot be sent/);
  assert.equal(r.tuned, true);
  assert.equal(r.after, 1);
});

test("two rule changes on one label at once both apply; a rule that is not an object is a TypeError, an empty one changes nothing", async () => {
  const r = await b.page.evaluate(() => window.webguard.rules());
  console.log(`# ${JSON.stringify(r)}`);
  assert.notEqual(r.before.threshold, 0.9);
  assert.notEqual(r.before.action, "warn");
  assert.equal(r.page.action, "warn");
  assert.ok(Math.abs(r.page.threshold - 0.9) < 1e-6, JSON.stringify(r.page));
  assert.match(r.numberRule, /^TypeError: setRule: the rule must be an object/);
  assert.equal(r.emptyRule, "no error");
  assert.match(r.nullRule, /^TypeError: setRule: the rule must be an object/);
  assert.deepEqual(r.after, r.page);
  // Partial rules as guard.d.ts types them, in Guard.create's options.
  assert.equal(r.createPartial, "no error");
});

test("callbacks and signals of the wrong type are TypeErrors, lone surrogates InvalidInputErrors; onStep returning false cancels", async () => {
  const r = await b.page.evaluate(() => window.webguard.handlers());
  console.log(`# ${JSON.stringify(r)}`);
  assert.match(r.create, /^TypeError: Guard.create options: onProgress must be a function \(got string\)/);
  assert.match(r.onStep, /^TypeError: tuneFilter options: onStep must be a function \(got number\)/);
  assert.match(r.signal, /^TypeError: tuneFilter options: signal must be an AbortSignal/);
  assert.equal(r.otherRealmSignal, "no error");
  assert.equal(r.loneExample, "InvalidInputError: example 1: text is not valid UTF-16 (it holds a lone surrogate)");
  assert.equal(r.loneMessage, "InvalidInputError: message 0: content is not valid UTF-16 (it holds a lone surrogate)");
  assert.equal(r.loneStop, "InvalidInputError: stop string 1 is not valid UTF-16 (it holds a lone surrogate)");
  assert.match(r.onStepFalse, /^CancelledError: /);
  assert.ok(r.stepsSeen >= 1 && r.stepsSeen < 1000, `${r.stepsSeen} steps`);
  assert.equal(r.labelsKept, true);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});

/** Cancelling tuning leaves the model as it was; an aborted answer is what was shown. */
function checkCancel(r) {
  assert.match(r.tuning, /^CancelledError: /);
  // The Guard had a taught label and a rule for it before: both kept, with their scores.
  assert.ok(r.labels.includes("spoiler"), r.labels);
  assert.equal(r.labelsKept, true);
  assert.equal(r.scoresKept, true);
  assert.equal(r.policyKept, true);
  assert.equal(r.tunesAfter, "no error");
  assert.equal(r.chat.blocked, false);
  assert.equal(r.chat.stopReason, "cancelled");
  assert.ok(r.chat.shown.length > 0);
  assert.equal(r.chat.text, r.chat.shown);
}

test("cross-origin isolated: cancelling tuning and generation through the shared flag", async () => {
  assert.equal(await b.page.evaluate(() => window.webguard.isolated()), true);
  const r = await b.page.evaluate(() => window.webguard.cancel());
  console.log(`# ${JSON.stringify(r)}`);
  checkCancel(r);
  // The worker read the flag and stopped generating (without it, it goes on unseen).
  assert.ok(r.chat.tokens < 64, `${r.chat.tokens} tokens`);
});

test("not cross-origin isolated: cancelling tuning stops the worker, the model as it was; an answer is cut to what was shown", async () => {
  // The same page without COOP/COEP: no shared memory, so no flag the worker can read.
  await withoutIsolation(b);
  await load(b, "calls");
  assert.equal(await b.page.evaluate(() => window.webguard.isolated()), false);
  const r = await b.page.evaluate(() => window.webguard.cancel());
  console.log(`# ${JSON.stringify(r)}`);
  checkCancel(r);
  assert.match(r.tuning, /not cross-origin isolated, so the worker was stopped/);
});

test("not cross-origin isolated: a tuning call cancelled while it waits for the tuning module is never sent, and the other call runs", async () => {
  assert.equal(await b.page.evaluate(() => window.webguard.isolated()), false);
  const r = await b.page.evaluate(() => window.webguard.cancelWaiting());
  console.log(`# ${JSON.stringify(r)}`);
  assert.equal(r.first, "no error");
  assert.match(r.second, /^CancelledError: tuneFilter was cancelled before it started/);
  assert.equal(r.tuning, true);
  assert.ok(r.labels.includes("spoiler"), r.labels);
  assert.equal(r.after, 1);
});

test("not cross-origin isolated: aborting a tuning run after dispose() is no page error", async () => {
  assert.equal(await b.page.evaluate(() => window.webguard.isolated()), false);
  const r = await b.page.evaluate(() => window.webguard.abortAfterDispose());
  console.log(`# ${JSON.stringify(r)}`);
  assert.equal(r.run, "Error: the Guard was disposed");
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
