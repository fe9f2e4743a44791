// The threaded module (issue 15, item 1): on a cross-origin isolated page, a Guard with 2
// threads loads webguard_threads_bg.wasm and its helper worker, and answers exactly as with 1
// thread (the same greedy text and token counts, the chat probe's and the filter's scores
// within 1e-4); a page that is not isolated, or helpers that cannot start, run one thread and
// say why.
import assert from "node:assert/strict";
import { test } from "node:test";
import { load, usePage, withoutIsolation } from "./browser.mjs";

const b = usePage("threads", { webgpu: false });

const close = (a, b, what) => assert.ok(Math.abs(a - b) <= 1e-4, `${what}: ${a} vs ${b}`);
const requested = (file) => b.requests.filter((u) => new URL(u).pathname === `/pkg/${file}`).length;

/** Two runs answer the same: text and token counts, probe scores and filter scores. */
function assertSame(one, two) {
  assert.equal(two.replies.length, one.replies.length);
  one.replies.forEach((r, i) => {
    const t = two.replies[i];
    assert.equal(t.text, r.text, `reply ${i}`);
    assert.deepEqual([t.tokens, t.promptTokens, t.stopReason, t.blocked], [r.tokens, r.promptTokens, r.stopReason, r.blocked], `reply ${i}`);
    if (r.chatJudge === null) assert.equal(t.chatJudge, null);
    else close(t.chatJudge, r.chatJudge, `reply ${i} chatJudge`);
  });
  one.scores.forEach((s, i) => {
    assert.deepEqual(Object.keys(two.scores[i]), Object.keys(s));
    for (const [label, v] of Object.entries(s)) close(two.scores[i][label], v, `text ${i} ${label}`);
  });
}

test("isolated page: 2 threads (the threaded module) answer as 1 thread does", async () => {
  assert.equal(await b.page.evaluate(() => window.webguard.isolated()), true);
  const one = await b.page.evaluate(() => window.webguard.run(1));
  assert.deepEqual(one.backend.threads, 1);
  assert.equal(one.backend.threadsReason, null);
  assert.equal(requested("webguard_threads_bg.wasm"), 0, "one thread asked: the single-threaded module");
  assert.equal(one.replies[0].text, "The capital of France is Paris.");
  assert.ok(one.replies[1].tokens >= 40, `a long answer: ${one.replies[1].tokens} tokens`);
  const two = await b.page.evaluate(() => window.webguard.run(2));
  assert.equal(two.backend.kind, "cpu");
  assert.equal(two.backend.threads, 2, JSON.stringify(two.backend));
  assert.equal(two.backend.threadsReason, null);
  assert.equal(requested("webguard_threads_bg.wasm"), 1);
  assert.ok(requested("guard-thread.js") >= 1, "a helper worker started");
  assertSame(one, two);
  console.log(`# ${JSON.stringify(two.replies.map((r) => r.text))}`);
});

test("threads must be an integer from 1 to 16; a Guard without a chat model runs one", async () => {
  const out = await b.page.evaluate(() => window.webguard.badThreads());
  for (const v of ["0", "17", "2.5", "2", "null"]) assert.match(out[v], /^TypeError: threads must be an integer from 1 to 16/, v);
  const before = requested("webguard_threads_bg.wasm");
  const r = await b.page.evaluate(() => window.webguard.filterOnly(2));
  assert.deepEqual([r.backend.threads, r.verdict], [1, false]);
  assert.match(r.backend.threadsReason, /this Guard has none: one thread$/);
  assert.equal(requested("webguard_threads_bg.wasm"), before);
});

test("helpers that cannot start: one thread (the single-threaded module), the reason given", async () => {
  // The worker script as served, with Worker made to fail (a browser without nested workers).
  // (Routing guard-thread.js itself does not work: Playwright does not see a worker's workers.)
  const context = b.page.context();
  const hook = async (route) => {
    const response = await route.fetch();
    const body = `${await response.text()}\nself.Worker = function () { throw new Error("no nested workers (test hook)"); };\n`;
    await route.fulfill({ response, body });
  };
  await context.route("**/pkg/guard-worker.js", hook);
  try {
    const r = await b.page.evaluate(() => window.webguard.run(2, 8));
    assert.equal(r.backend.threads, 1);
    assert.equal(r.backend.threadsReason, "threads did not start (no nested workers (test hook)): one thread");
    assert.equal(r.replies[0].text, "The capital of France is Paris.");
  } finally {
    await context.unroute("**/pkg/guard-worker.js", hook);
  }
});

test("a page that is not cross-origin isolated: one thread, the reason given", async () => {
  // The same page without COOP/COEP: no shared memory, so no threads.
  await withoutIsolation(b);
  await load(b, "threads");
  assert.equal(await b.page.evaluate(() => window.webguard.isolated()), false);
  const before = requested("webguard_threads_bg.wasm");
  const r = await b.page.evaluate(() => window.webguard.run(2, 8));
  assert.equal(r.backend.threads, 1);
  assert.match(r.backend.threadsReason, /not cross-origin isolated/);
  assert.equal(requested("webguard_threads_bg.wasm"), before, "the threaded module is not fetched");
  assert.equal(r.replies[0].text, "The capital of France is Paris.");
});
