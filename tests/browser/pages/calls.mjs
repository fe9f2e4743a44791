// Exposes to calls.test.mjs the ways a page's calls can go wrong without an error of the
// models' own: arguments the worker cannot receive, concurrent rule changes, callbacks of the
// wrong type, and cancelling where the page is or is not cross-origin isolated.
import { Guard } from "/pkg/guard.js";
import { chatUrl, filterUrl, spoilers } from "./common.mjs";

const outcome = async (call) => {
  try { await call(); return "no error"; }
  catch (e) { return `${e?.name}: ${e?.message}`; }
};
const scoresOf = async (g, text) => (await g.classify([text]))[0].scores;

window.webguard = {
  isolated: () => self.crossOriginIsolated,

  /** A call whose arguments cannot be cloned rejects; the first tuning call after it (which
   *  waits for every call in flight, then moves to the tuning module) still runs. */
  async uncloneable() {
    const g = await Guard.create({ filterUrl, backend: "cpu", cache: false });
    try {
      const out = {
        classify: await outcome(() => g.classify([() => 1])),
        importOptions: await outcome(() => g.importAdapters(new Uint8Array(8), { replaceShippedLabels: () => true })),
      };
      const report = await g.tuneFilter(await spoilers(), { steps: 2 });
      out.tuned = Number.isFinite(report.finalLoss);
      out.after = (await g.classify(["have a nice day"])).length;
      return out;
    } finally {
      g.dispose();
    }
  },

  /** Two changes to one label made at once, and rules of the wrong shape. */
  async rules() {
    const g = await Guard.create({ filterUrl, backend: "cpu", cache: false });
    try {
      const before = g.policy.hate;
      await Promise.all([g.setRule("hate", { threshold: 0.9 }), g.setRule("hate", { action: "warn" })]);
      return {
        before,
        page: g.policy.hate,
        numberRule: await outcome(() => g.setRule("hate", 0.9)),
        emptyRule: await outcome(() => g.setRule("hate", {})),
        nullRule: await outcome(() => g.setRule("hate", null)),
        after: g.policy.hate,
        createPartial: await outcome(async () => {
          const partial = await Guard.create({ filterUrl, backend: "cpu", cache: false, policy: { hate: {} }, thresholds: { offensive: undefined } });
          partial.dispose();
        }),
      };
    } finally {
      g.dispose();
    }
  },

  /** Callbacks and signals of the wrong type are refused when given. */
  async handlers() {
    const examples = await spoilers();
    const out = { create: await outcome(() => Guard.create({ filterUrl, backend: "cpu", cache: false, onProgress: "log" })) };
    const g = await Guard.create({ filterUrl, backend: "cpu", cache: false, tuning: true });
    try {
      out.onStep = await outcome(() => g.tuneFilter(examples, { steps: 2, onStep: 5 }));
      out.signal = await outcome(() => g.tuneFilter(examples, { steps: 2, signal: "stop" }));
      // An iframe's AbortController makes another realm's AbortSignal: still a signal.
      const frame = document.body.appendChild(document.createElement("iframe"));
      const otherRealm = new frame.contentWindow.AbortController();
      out.otherRealmSignal = await outcome(() => g.tuneFilter(examples, { steps: 2, signal: otherRealm.signal }));
      frame.remove();
      // A lone surrogate would reach the module as U+FFFD: refused by name.
      out.loneExample = await outcome(() => g.tuneFilter([{ text: "ok", label: "x", value: false }, { text: "a\uD800b", label: "x", value: true }]));
      out.loneMessage = await outcome(() => g.chat([{ role: "user", content: "hi \uDC00" }]));
      out.loneStop = await outcome(() => g.chat([{ role: "user", content: "hi" }], { stop: ["ok", "\uD800"] }));
      // onStep returning false cancels, and the labels stay as they were.
      const labels = g.labels.join(",");
      let steps = 0;
      out.onStepFalse = await outcome(() => g.tuneFilter(examples, { steps: 1000, onStep: () => { steps += 1; return false; } }));
      out.stepsSeen = steps;
      out.labelsKept = g.labels.join(",") === labels;
      return out;
    } finally {
      g.dispose();
    }
  },

  /** Cancelling tuning and generation (run on a page with or without cross-origin isolation). */
  async cancel() {
    const examples = await spoilers();
    const g = await Guard.create({ filterUrl, chatUrl, backend: "cpu", cache: false, tuning: true });
    try {
      // State a reloaded worker must bring back: a taught label and a rule for it.
      await g.tuneFilter(examples, { steps: 2 });
      await g.setRule("spoiler", { threshold: 0.42, action: "warn" });
      const text = examples[0].text;
      const before = await scoresOf(g, text);
      const labels = g.labels.join(",");
      const policy = JSON.stringify(g.policy);
      const abort = new AbortController();
      const out = {
        tuning: await outcome(() => g.tuneFilter(examples, { steps: 1000, signal: abort.signal, onStep: () => abort.abort() })),
      };
      // The model is as it was: the same labels and the same scores.
      out.labels = g.labels;
      out.labelsKept = g.labels.join(",") === labels;
      out.scoresKept = JSON.stringify(await scoresOf(g, text)) === JSON.stringify(before);
      out.policyKept = JSON.stringify(g.policy) === policy;
      // Generation: aborted after the first piece, the reply is what was shown.
      const stop = new AbortController();
      const shown = [];
      const reply = await g.chat([{ role: "user", content: "Tell me a long story about a lighthouse keeper." }], {
        maxTokens: 64, signal: stop.signal, onToken: (piece) => { shown.push(piece); stop.abort(); },
      });
      out.chat = { text: reply.text, shown: shown.join(""), stopReason: reply.stopReason, blocked: reply.blocked, tokens: reply.tokens };
      // Tuning again works (on a page without isolation: in the reloaded worker).
      out.tunesAfter = await outcome(() => g.tuneFilter(examples, { steps: 2 }));
      return out;
    } finally {
      g.dispose();
    }
  },

  /** Two tuning calls on a Guard created without the tuning module; the second is cancelled
   *  while both wait for the module to load. */
  async cancelWaiting() {
    const examples = await spoilers();
    const g = await Guard.create({ filterUrl, backend: "cpu", cache: false });
    try {
      const abort = new AbortController();
      const first = outcome(() => g.tuneFilter(examples, { steps: 2 }));
      const second = outcome(() => g.tuneFilter(examples, { steps: 2, signal: abort.signal }));
      abort.abort();
      return {
        first: await first,
        second: await second,
        tuning: g.tuning,
        labels: g.labels,
        after: (await g.classify(["have a nice day"])).length,
      };
    } finally {
      g.dispose();
    }
  },

  /** A tuning run whose Guard is disposed, then its signal aborted (a page's clean-up). */
  async abortAfterDispose() {
    const examples = await spoilers();
    const g = await Guard.create({ filterUrl, backend: "cpu", cache: false, tuning: true });
    const abort = new AbortController();
    let started;
    const stepped = new Promise((resolve) => { started = resolve; });
    const run = outcome(() => g.tuneFilter(examples, { steps: 1000, signal: abort.signal, onStep: () => started() }));
    await stepped;
    g.dispose();
    abort.abort();
    return { run: await run };
  },
};
