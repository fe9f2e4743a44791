// Issue 18, item 1: the tuning code is a second wasm module (webguard_tune_bg.wasm) that a
// Guard loads only when the page first tunes, in a new worker that takes the page's rules and
// adapters along; `tuning: true` loads it from the start.
import assert from "node:assert/strict";
import { test } from "node:test";
import { usePage } from "./browser.mjs";

const b = usePage("hardening", { webgpu: false });
const wasmRequests = (from) => b.requests.slice(from).map((u) => new URL(u).pathname).filter((p) => p.endsWith(".wasm"));

test("a Guard loads the tuning module on its first tuning call and keeps its rules, adapters and calls", async () => {
  const start = b.requests.length;
  const r = await b.page.evaluate(async () => {
    const g = await Guard.create({ filterUrl: models.filterUrl, backend: "cpu", otherLanguages: "judge" });
    try {
      const out = { tuningAtStart: g.tuning, otherLanguagesAtStart: g.otherLanguages };
      await g.setRule("offensive", { threshold: 0.77, action: "warn" });
      const texts = ["you are an idiot", "Snape kills Dumbledore at the end of the book"];
      out.before = await g.classify(texts);
      out.requestsBefore = performance.getEntriesByType("resource").length;
      // A classify sent with the tuning call and one sent while the move is under way both
      // settle: the first on the old worker, the second on the new one.
      const tuned = g.tuneFilter(await spoilers(), { steps: 5 });
      const during = g.classify(texts);
      out.report = await tuned;
      out.during = await during;
      out.tuningAfter = g.tuning;
      out.policy = g.policy;
      out.otherLanguages = g.otherLanguages;
      out.labels = g.labels;
      out.after = await g.classify(texts);
      // The adapters taught in the tuning module export and import like any others.
      out.exported = (await g.exportAdapters("filter")).byteLength;
      return out;
    } finally {
      g.dispose();
    }
  });
  assert.equal(r.tuningAtStart, false);
  assert.equal(r.tuningAfter, true);
  assert.deepEqual([r.otherLanguagesAtStart, r.otherLanguages], ["judge", "judge"]);
  assert.deepEqual(r.report.labels, ["spoiler"]);
  assert.ok(r.labels.includes("spoiler"), JSON.stringify(r.labels));
  assert.deepEqual(r.policy.offensive, { threshold: Math.fround(0.77), action: "warn" }); // an f32
  // The shipped labels score the same in both modules (same code, same weights).
  for (const [i, text] of r.before.entries()) {
    for (const label of ["offensive", "hate", "harmful"]) {
      assert.ok(Math.abs(text.scores[label] - r.after[i].scores[label]) < 1e-5, `${label}: ${text.scores[label]} vs ${r.after[i].scores[label]}`);
      assert.ok(Math.abs(text.scores[label] - r.during[i].scores[label]) < 1e-5, label);
    }
  }
  assert.ok(r.after[1].scores.spoiler > r.after[0].scores.spoiler, JSON.stringify(r.after));
  assert.ok(r.exported > 0);
  // The smaller module first, then the tuning module once.
  const wasm = wasmRequests(start);
  assert.deepEqual(wasm, ["/pkg/webguard_bg.wasm", "/pkg/webguard_tune_bg.wasm"], wasm.join(" "));
});

test("tuning: true loads only the tuning module, and tunes without moving", async () => {
  const start = b.requests.length;
  const r = await b.page.evaluate(async () => {
    const g = await Guard.create({ filterUrl: models.filterUrl, backend: "cpu", tuning: true });
    try {
      const out = { tuning: g.tuning };
      out.report = await g.tuneFilter(await spoilers(), { steps: 3 });
      out.badOption = await settle(Guard.create({ filterUrl: models.filterUrl, backend: "cpu", tuning: "yes" }));
      out.badLanguages = await settle(Guard.create({ filterUrl: models.filterUrl, backend: "cpu", otherLanguages: "translate" }));
      return out;
    } finally {
      g.dispose();
    }
  });
  assert.equal(r.tuning, true);
  assert.deepEqual(r.report.labels, ["spoiler"]);
  assert.match(r.badOption.error, /TypeError: tuning must be true or false/);
  assert.match(r.badLanguages.error, /TypeError: otherLanguages must be "block", "judge" or "allow" \(got "translate"\)/);
  assert.deepEqual(wasmRequests(start), ["/pkg/webguard_tune_bg.wasm"]);
});
