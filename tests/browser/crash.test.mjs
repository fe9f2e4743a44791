// Issue 17, items 1 (the JS half) and 4: a Guard outlives a crash of its worker, and the
// GPU-to-CPU fallback keeps the page's tuning and rules.
//
// A Rust panic traps the wasm module (panic=abort). How it reaches JS is reproduced by a test
// hook appended to the worker script as it is served (the shipped worker has none): a
// `classify` whose first text is "__trap__" traps the way a panic inside wasm-bindgen's future
// polling does (the call's promise never settles, an uncaught RuntimeError "unreachable"),
// "__trap_sync__" traps inside the call itself, and "__gpu_lost__" fails with a BackendError on
// WebGPU (a lost device); a chat with the option \`__gpuLostAfter\` loses it mid-answer. The real panic the issue names (`stop` cut back inside an answer) is
// tried too, for as long as it exists.
import assert from "node:assert/strict";
import { test } from "node:test";
import { pkgOverride, usePage } from "./browser.mjs";

const HOOK = `
// ---- test hook, appended by tests/browser/crash.test.mjs ----
// Every build of the module (guard-worker.js loads one at create; the threaded one on this
// cross-origin isolated page): their imports resolve here first, so the hook is in place
// before any Guard is made.
const hook = (WasmGuard) => {
  const realClassify = WasmGuard.prototype.classify;
  WasmGuard.prototype.classify = function (texts) {
    if (texts?.[0] === "__trap__") {
      setTimeout(() => { throw new WebAssembly.RuntimeError("unreachable"); });
      return new Promise(() => {});
    }
    if (texts?.[0] === "__trap_sync__") throw new WebAssembly.RuntimeError("unreachable");
    if (texts?.[0] === "__gpu_lost__" && this.backend === "webgpu") {
      const e = new Error("the device was lost (test hook)");
      e.name = "BackendError";
      throw e;
    }
    return realClassify.call(this, texts);
  };
  // A chat whose options carry \`__gpuLostAfter: [pieces]\` streams those pieces on WebGPU and
  // then fails as a lost device would, mid-answer; on the CPU it answers for real.
  const realChat = WasmGuard.prototype.chat;
  WasmGuard.prototype.chat = function (messages, options, onText, shouldStop) {
    const { __gpuLostAfter: shown, ...rest } = options ?? {};
    if (shown !== undefined && this.backend === "webgpu") {
      for (const piece of shown) onText(piece);
      const e = new Error("the device was lost mid-answer (test hook)");
      e.name = "BackendError";
      return Promise.reject(e);
    }
    return realChat.call(this, messages, rest, onText, shouldStop);
  };
};
import("./webguard.js").then((m) => hook(m.Guard));
import("./webguard_tune.js").then((m) => hook(m.Guard));
import("./webguard_threads.js").then((m) => hook(m.Guard));
`;

/** Serves guard-worker.js with the hook appended (headers as served). */
async function hookWorker(b) {
  await b.page.context().route("**/pkg/guard-worker.js", async (route) => {
    const response = await route.fetch();
    const body = pkgOverride("guard-worker.js") ?? await response.text();
    await route.fulfill({ response, body: body + HOOK });
  });
}

/** The filter's encoder as Guard.create fetches it by default (pkg/, 8-bit since issue 13). */
const ENCODER = "pkg/all-MiniLM-L6-v2.int8.safetensors";

const noPageErrors = (b) => assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));

let failModel = false; // the encoder's download fails (HTTP 503) while set
const b = usePage("hardening", {
  webgpu: true,
  async setup(b) {
    await hookWorker(b);
    await b.page.exposeFunction("failModelDownloads", (on) => { failModel = on; });
    // The encoder Guard.create downloads by default: the package's 8-bit file.
    await b.page.context().route(`**/${ENCODER}`, (route) => (
      failModel ? route.fulfill({ status: 503, body: "unavailable" }) : route.fallback()));
  },
});

test("a trapped worker rejects every pending call, and the next call reloads it with tuning, rules and the other-languages choice", async () => {
  const start = b.requests.length;
  const r = await b.page.evaluate(async () => {
    const g = await Guard.create({ filterUrl: models.filterUrl, backend: "cpu" });
    const out = {};
    try {
      await g.tuneFilter(await spoilers(), { steps: 5 });
      await g.setRule("offensive", { threshold: 0.77, action: "warn" });
      await g.setRule("spoiler", { threshold: 0.42 });
      await g.setOtherLanguages("judge");
      const texts = ["you are an idiot", "Snape kills Dumbledore at the end of the book"];
      out.before = await g.classify(texts);
      out.originsBefore = g.labelOrigins;
      out.loadedAt = performance.now();
      // The trap and two calls queued behind it: all three settle, as CrashErrors.
      out.pending = await Promise.all([
        settle(g.classify(["__trap__"]), 20_000),
        settle(g.classify(["hello"]), 20_000),
        settle(g.setRule("hate", { threshold: 0.6 }), 20_000),
      ]);
      // The next call works: a new worker, the models from the cache, tuning and rules back.
      out.after = await settle(g.classify(texts), 120_000);
      out.labels = g.labels;
      out.origins = g.labelOrigins;
      out.policy = g.policy;
      out.otherLanguages = g.otherLanguages;
      // A trap that surfaces as the call's own exception.
      out.sync = await settle(g.classify(["__trap_sync__"]), 20_000);
      out.again = await settle(g.classify(["have a nice day"]), 120_000);
      out.adapters = await settle(g.exportAdapters("filter").then((a) => a.byteLength), 20_000);
    } finally {
      g.dispose();
    }
    out.disposed = await settle(g.classify(["x"]), 5_000);
    return out;
  });
  console.log(`# pending: ${JSON.stringify(r.pending)}`);
  for (const p of r.pending) {
    assert.equal(p.ok, false);
    assert.match(p.error, /^CrashError: the webguard worker crashed during classify \(.*unreachable.*\); the Guard reloads on the next call/);
  }
  assert.equal(r.after.ok, true, r.after.error);
  assert.deepEqual(r.labels, ["offensive", "hate", "harmful", "spoiler"]);
  // The taught label is still "taught" (not "imported", though the reload imported it).
  assert.deepEqual(r.originsBefore, { offensive: "shipped", hate: "shipped", harmful: "shipped", spoiler: "taught" });
  assert.deepEqual(r.origins, r.originsBefore);
  assert.equal(r.policy.offensive.action, "warn");
  assert.equal(r.policy.offensive.threshold.toFixed(2), "0.77");
  assert.equal(Math.round(r.policy.spoiler.threshold * 100), 42);
  assert.equal(r.otherLanguages, "judge");
  // The same scores as before the crash, tuned label included.
  for (const [i, v] of r.after.value.entries()) {
    for (const [label, score] of Object.entries(r.before[i].scores)) {
      assert.ok(Math.abs(v.scores[label] - score) < 1e-4, `${label}: ${v.scores[label]} vs ${score}`);
    }
  }
  assert.equal(r.sync.ok, false);
  assert.match(r.sync.error, /^CrashError: .*unreachable/);
  assert.equal(r.again.ok, true, r.again.error);
  assert.ok(r.adapters.value > 0, r.adapters.error);
  assert.match(r.disposed.error, /disposed/);
  // Reloading read the models from the Cache API: each model file was downloaded once.
  const downloads = b.requests.slice(start).filter((u) => u.includes("/models/") || u.endsWith(".safetensors"));
  assert.equal(downloads.filter((u) => u.endsWith(`/${ENCODER}`)).length, 1, downloads.join("\n"));
  for (const f of ["tokenizer.json", "config.json"]) {
    assert.equal(downloads.filter((u) => u.endsWith(`/all-MiniLM-L6-v2/${f}`)).length, 1, downloads.join("\n"));
  }
  noPageErrors(b);
});

test("the panic from the issue (stop inside an answer), while it exists, does not hang the Guard", async () => {
  const r = await b.page.evaluate(async () => {
    const g = await Guard.create({ ...models, backend: "cpu" });
    try {
      const messages = [{ role: "user", content: "Tell me two facts about Paris." }];
      const first = await settle(g.chat(messages, { stop: [". "], maxTokens: 60 }), 120_000);
      const next = await settle(g.chat([{ role: "user", content: "What is the capital of France?" }], { maxTokens: 8 }), 120_000);
      return { first, next };
    } finally {
      g.dispose();
    }
  });
  console.log(`# stop ". ": ${JSON.stringify(r.first).slice(0, 300)}`);
  assert.ok(r.first.ok || /^CrashError: .*panicked at/.test(r.first.error), r.first.error);
  assert.equal(r.next.ok, true, r.next.error);
  assert.match(r.next.value.text, /Paris/);
  noPageErrors(b);
});

test("auto on a software adapter (SwiftShader): the chat model runs on the CPU and says why; with threads, the threaded module", async () => {
  const r = await b.page.evaluate(async () => {
    const out = {};
    const g = await Guard.create({ ...models, backend: "auto", threads: 1, cache: false });
    try {
      out.one = g.backend;
      out.answer = (await g.chat([{ role: "user", content: "What is the capital of France?" }], { maxTokens: 8 })).text;
    } finally {
      g.dispose();
    }
    const threaded = await Guard.create({ ...models, backend: "auto", threads: 2 });
    out.two = threaded.backend;
    threaded.dispose();
    return out;
  });
  // One thread: the single-threaded module sets up WebGPU; the filter timed both devices and
  // keeps every batch on the CPU; the chat model runs on the CPU by rule, with the reason.
  assert.equal(r.one.kind, "webgpu", JSON.stringify(r.one));
  assert.equal(r.one.filter.gpuFromBatch, null, r.one.filter.reason);
  assert.equal(r.one.chat.kind, "cpu");
  assert.match(r.one.chat.reason, /WebGPU adapter \(.*\) is a software rasteriser: the CPU backend decodes faster/);
  assert.match(r.answer, /Paris/);
  // Two threads: a software adapter does not claim the page, so
  // the threaded (CPU) module runs.
  assert.equal(r.two.kind, "cpu", JSON.stringify(r.two));
  assert.equal(r.two.threads, 2, r.two.threadsReason);
  assert.equal(r.two.chat.kind, "cpu");
  noPageErrors(b);
});

test("GPU to CPU fallback: tuned labels, rules and the other-languages choice come along; if the CPU cannot take over, nothing changes", async () => {
  const r = await b.page.evaluate(async () => {
    const out = {};
    // Adapters tuned on the CPU (quicker than on SwiftShader), loaded into a WebGPU Guard.
    const cpu = await Guard.create({ filterUrl: models.filterUrl, backend: "cpu" });
    await cpu.tuneFilter(await spoilers(), { steps: 5 });
    const adapters = await cpu.exportAdapters("filter");
    cpu.dispose();
    const g = await Guard.create({ filterUrl: models.filterUrl, backend: "webgpu", cache: false });
    try {
      out.kind = g.backend.kind;
      out.filterBefore = g.backend.filter;
      await g.importAdapters(adapters);
      await g.setRule("spoiler", { threshold: 0.33, action: "warn" });
      await g.setRule("hate", { threshold: 0.9 });
      await g.setOtherLanguages("allow");
      const text = ["Snape kills Dumbledore at the end of the book"];
      out.before = (await g.classify(text))[0];
      // The CPU cannot take over (the encoder's download fails): the call fails with the
      // GPU's error and the Guard is as it was, on WebGPU.
      await failModelDownloads(true);
      out.failed = await settle(g.classify(["__gpu_lost__"]), 120_000);
      await failModelDownloads(false);
      out.stillKind = g.backend.kind;
      out.stillLabels = g.labels;
      out.stillPolicy = g.policy;
      // Now it can: the call is retried on the CPU, with the tuned label and the rules.
      out.moved = await settle(g.classify(["__gpu_lost__"]), 120_000);
      out.backend = g.backend;
      out.labels = g.labels;
      out.origins = g.labelOrigins;
      out.policy = g.policy;
      out.otherLanguages = g.otherLanguages;
      out.after = (await g.classify(text))[0];
    } finally {
      g.dispose();
    }
    return out;
  });
  assert.equal(r.kind, "webgpu");
  assert.deepEqual(r.filterBefore, { gpuFromBatch: 1, reason: "the GPU requested: every batch on the GPU", measured: null });
  assert.match(r.failed.error ?? "", /^BackendError: the device was lost/);
  assert.equal(r.stillKind, "webgpu");
  assert.ok(r.stillLabels.includes("spoiler"));
  assert.equal(r.stillPolicy.spoiler.action, "warn");
  assert.equal(r.stillPolicy.spoiler.threshold.toFixed(2), "0.33");
  assert.equal(r.moved.ok, true, r.moved.error);
  assert.equal(r.backend.kind, "cpu");
  assert.match(r.backend.reason, /WebGPU failed \(the device was lost/);
  assert.equal(r.backend.filter.reason, "CPU requested: every batch on the CPU");
  assert.deepEqual(r.labels, ["offensive", "hate", "harmful", "spoiler"]);
  assert.deepEqual(r.origins, { offensive: "shipped", hate: "shipped", harmful: "shipped", spoiler: "imported" });
  assert.equal(r.policy.spoiler.action, "warn");
  assert.equal(r.policy.spoiler.threshold.toFixed(2), "0.33");
  assert.equal(r.policy.hate.threshold.toFixed(2), "0.90");
  assert.equal(r.otherLanguages, "allow");
  assert.ok(Math.abs(r.after.scores.spoiler - r.before.scores.spoiler) < 0.02, `${r.after.scores.spoiler} vs ${r.before.scores.spoiler}`);
  noPageErrors(b);
});

test("WebGPU lost mid-answer: the CPU's run continues what was shown and only the rest reaches onToken; an answer that departs from it ends with what was shown", async () => {
  const r = await b.page.evaluate(async () => {
    const messages = [{ role: "user", content: "Name three fruits, one per sentence." }];
    const answer = async (g, extra = {}) => {
      const pieces = [];
      const reply = await g.chat(messages, { maxTokens: 40, ...extra, onToken: (p) => pieces.push(p) });
      return { pieces, text: reply.text, stopReason: reply.stopReason, blocked: reply.blocked };
    };
    const cpu = await Guard.create({ filterUrl: models.filterUrl, chatUrl: models.chatUrl, backend: "cpu" });
    const out = {};
    try {
      out.reference = await answer(cpu);
    } finally {
      cpu.dispose();
    }
    const cases = [["continued", out.reference.pieces.slice(0, 2)], ["departed", ["Zebras are not fruit. "]]];
    for (const [name, shown] of cases) {
      const g = await Guard.create({ filterUrl: models.filterUrl, chatUrl: models.chatUrl, backend: "webgpu" });
      try {
        out[name] = { kind: g.backend.kind, ...await answer(g, { __gpuLostAfter: shown }), after: g.backend.kind };
      } finally {
        g.dispose();
      }
    }
    return out;
  });
  console.log(`# ${JSON.stringify(r)}`);
  const { reference, continued, departed } = r;
  assert.equal(reference.blocked, false);
  assert.ok(reference.pieces.length >= 3, JSON.stringify(reference.pieces));
  // Each piece once, in order: the two the GPU showed, then the CPU's from where they end.
  assert.equal(continued.kind, "webgpu");
  assert.equal(continued.after, "cpu");
  assert.deepEqual(continued.pieces, reference.pieces);
  assert.equal(continued.text, reference.text);
  assert.equal(continued.stopReason, reference.stopReason);
  assert.equal(departed.after, "cpu");
  assert.deepEqual(departed.pieces, ["Zebras are not fruit. "]);
  assert.equal(departed.text, "Zebras are not fruit. ");
  assert.equal(departed.stopReason, "gpuLost");
  noPageErrors(b);
});
