// webguard's worker: every model byte is fetched, cached and run here, so the page's main
// thread only renders. Spoken to by guard.js with { id, op, args } messages; answers with
// { id, type: "progress" | "token" | "backend" | "result" | "error" | "fatal", data }. An
// error's data is { name, message }: the name is the kind ("BackendError", ...; see guard.d.ts),
// which guard.js gives the Error it rejects with. "fatal" says the wasm module trapped (a
// Rust panic: panic=abort): nothing more can run here, and guard.js replaces this worker.

// Two builds of the same module: webguard.js without the tuning code (autodiff and the
// optimiser; the smaller first download) and webguard_tune.js with it. `create` loads one
// ({ tuning }); guard.js starts a worker with the second when a page first tunes.
let WasmGuard;
let threading = { threads: 1, threadsReason: null }; // what loadModule got

const CACHE_NAME = "webguard-models-v1";
let guard;
let files; // the sources, kept to rebuild on the CPU if the GPU is lost
let settings;
// What the page changed since loading, as adapters files (tuned filter labels, chat LoRA),
// exported right after each change while the backend works, so a rebuild (the CPU fallback
// here, a crash recovery in guard.js) can restore them without reading a failed GPU.
const saved = { filter: null, chat: null };

// sha256 of every model file, by role: the files scripts/fetch-models.sh fetches (the same
// hashes it checks) and the three this package ships (assets/). A file fetched from a URL is
// checked against these before it is used or cached; `Guard.create({ integrity })` overrides
// one (a page's own model) or turns the check off (`false`). tests/browser/manifest.test.mjs
// keeps this table equal to fetch-models.sh and assets/.
const MANIFEST = {
  tokenizer: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", // all-MiniLM-L6-v2/tokenizer.json
  config: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", // all-MiniLM-L6-v2/config.json
  model: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", // all-MiniLM-L6-v2/model.safetensors
  heads: "c4e682a890cb1d41c5179d7a7104b6edf99f8250b8a5239df2a3572cd1144748", // filter-heads.safetensors
  chat: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", // SmolLM2-135M-Instruct.Q4_1.gguf
  chatProbe: "8b2ae536a283aa9587639f95b1e7b52b3e34ce944931ffd9b2dcffaceca8807d", // chat-probe.safetensors
  safetyAdapters: "f6c463a6899e1893150345d168ce6b5e7d78a1ce2545fea2f08443e25615cf82", // chat-safety-adapters.safetensors
};

// The filter encoder in 8 bits, the default model (all-MiniLM-L6-v2.int8.safetensors, shipped
// in this package): made from model.safetensors above by `webguard quantize-filter`
// (./build.sh build), byte for byte the same on every machine, so its hash is fixed here;
// tests/filter_int8.rs checks it against what the build makes. The `model` role accepts
// either file.
const MODEL_INT8 = "7f17921ef763bd4c85dd1f286cf10696d396f49db592fe949eb1f9760e521a7a";
const ALSO_ACCEPTED = { model: [MODEL_INT8] };

const post = (id, type, data) => self.postMessage({ id, type, data });

/** An Error named by its kind, like those the wasm module throws. */
function named(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

// ---------------------------------------------------------------- crashes
// A Rust panic aborts: the wasm module traps (a WebAssembly.RuntimeError, "unreachable") and
// its memory is in an unknown state, so nothing may run in it again. The trap surfaces as an
// uncaught error (inside wasm-bindgen's future polling; the call's promise then never
// settles), an unhandled rejection, or an exception from a call. Every path ends in `crash`,
// which tells the page once; the page rejects what is pending and starts a new worker.
let crashed = null; // { name, message } once the module has trapped
let lastPanic = null;
const consoleError = console.error.bind(console);
console.error = (...args) => {
  // console_error_panic_hook logs "panicked at file:line: message" just before the trap.
  const text = args.map(String).join(" ");
  if (text.includes("panicked at")) lastPanic = text.split(/\n\s*Stack:/)[0].replace(/\s+/g, " ").trim();
  consoleError(...args);
};
const isTrap = (e) => e instanceof WebAssembly.RuntimeError;

let running = null; // the operation in progress, named in a crash report

function crash(error) {
  if (!crashed) {
    const what = lastPanic ?? `${error?.name ?? "Error"}: ${error?.message ?? error}`;
    const during = running ? ` during ${running}` : "";
    crashed = { name: "CrashError", message: `the webguard worker crashed${during} (${what}); the Guard reloads on the next call` };
    post(0, "fatal", crashed);
  }
  return crashed;
}
self.addEventListener("error", (event) => {
  event.preventDefault(); // reported by "fatal", not again as the page's own error
  crash(event.error ?? event.message);
});
self.addEventListener("unhandledrejection", (event) => {
  if (!isTrap(event.reason)) return;
  event.preventDefault();
  crash(event.reason);
});

// ---------------------------------------------------------------- the wasm module

/** Loads webguard.js or, for `tuning`, webguard_tune.js (each finds its wasm beside itself and
 * compiles it while it downloads; the browser keeps the compiled code for the next visit) and
 * resolves to `{ Guard, threads, threadsReason }`. With `threads` > 1, a chat model, no
 * tuning and the CPU to run on (`backend` "cpu", or "auto" without a WebGPU adapter), it tries
 * the threaded module first (webguard_threads.js: shared memory, helper workers running
 * guard-thread.js), and falls back to webguard.js with the reason when the page is not
 * cross-origin isolated or the helpers do not start. Progress (phase "module") says when a
 * module starts loading and when it is done. */
async function loadModule(id, tuning, threads, hasChat, backend) {
  let threadsReason = null;
  const gpu = threads > 1 && hasChat && !tuning && backend !== "cpu" ? await webgpuWanted(backend) : null;
  if (threads > 1 && !hasChat) {
    // The filter's encoder runs on one thread in either module: no helpers for nothing.
    threadsReason = "only the chat model's products use threads, and this Guard has none: one thread";
  } else if (gpu) {
    threadsReason = gpu;
  } else if (tuning) {
    if (threads > 1) threadsReason = "the tuning module is single-threaded";
  } else if (threads > 1 && !self.crossOriginIsolated) {
    threadsReason = "the page is not cross-origin isolated (it needs COOP/COEP headers for shared memory): one thread";
  } else if (threads > 1) {
    const file = "webguard_threads_bg.wasm";
    post(id, "progress", { file, phase: "module", loaded: 0, total: 0 });
    try {
      const mod = await import("./webguard_threads.js");
      await mod.default();
      const started = await startHelpers(mod, threads);
      post(id, "progress", { file, phase: "module", loaded: 0, total: 0, done: true });
      return { Guard: mod.Guard, threads: started, threadsReason: started < threads ? `the threaded module gave ${started} threads` : null };
    } catch (e) {
      // Nothing is loaded into this module yet: its memory stays behind, a few megabytes.
      for (const w of helpers.splice(0)) w.terminate();
      threadsReason = `threads did not start (${e?.message ?? e}): one thread`;
      console.warn(`webguard: ${threadsReason}`);
    }
  }
  const file = tuning ? "webguard_tune_bg.wasm" : "webguard_bg.wasm";
  post(id, "progress", { file, phase: "module", loaded: 0, total: 0 });
  const mod = tuning ? await import("./webguard_tune.js") : await import("./webguard.js");
  await mod.default();
  post(id, "progress", { file, phase: "module", loaded: 0, total: 0, done: true });
  return { Guard: mod.Guard, threads: 1, threadsReason };
}

/** Why the threaded module (CPU only: cubecl-wgpu does not build with atomics) is not for
 * `backend`: "webgpu" asked for, or "auto" where WebGPU gives a hardware adapter (the
 * single-threaded module runs the chat model there); null when the CPU will run it anyway
 * (no adapter, or a software one such as SwiftShader, where "auto" runs the chat model on the
 * CPU: the same test as the Rust side's `AdapterInfo::is_software`). */
async function webgpuWanted(backend) {
  if (backend === "webgpu") return "WebGPU requested (the threaded module runs on the CPU only): the single-threaded module";
  const adapter = self.navigator?.gpu ? await self.navigator.gpu.requestAdapter().catch(() => null) : null;
  if (!adapter || adapter.info?.isFallbackAdapter === true) return null;
  return "WebGPU is available (the threaded module runs on the CPU only): the single-threaded module";
}

// The threaded module's helper workers (they live as long as this worker).
const helpers = [];
/** How long helpers may take to instantiate the module before the single-threaded one is
 * used instead (compiled code is shared, so this is a few hundred milliseconds normally). */
const HELPER_START_MS = 20_000;

/** Sizes the threaded module's pool and starts its helpers: resolves to the thread count once
 * every helper has instantiated the module on the shared memory; rejects (never hangs) when
 * one fails or they take over HELPER_START_MS. */
async function startHelpers(mod, threads) {
  const count = mod.startThreads(threads);
  const [module, memory] = mod.threadModuleAndMemory();
  const ready = [];
  for (let i = 1; i < count; i++) {
    const w = new Worker(new URL("./guard-thread.js", import.meta.url), { type: "module", name: `webguard-thread-${i}` });
    helpers.push(w);
    ready.push(new Promise((resolve, reject) => {
      w.onmessage = ({ data }) => (data?.ok ? resolve() : reject(new Error(data?.message ?? "a helper failed")));
      w.onerror = (e) => { e.preventDefault?.(); reject(new Error(e.message || "a helper worker failed to load")); };
    }));
    w.postMessage({ module, memory });
  }
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`helpers not ready after ${HELPER_START_MS / 1000} s`)), HELPER_START_MS);
  });
  try {
    await Promise.race([Promise.all(ready), late]);
  } finally {
    clearTimeout(timer);
  }
  return count;
}

// ---------------------------------------------------------------- model files

/** Lowercase hex sha256 of `bytes`. */
async function sha256(bytes) {
  if (!self.crypto?.subtle) {
    throw named("IoError", "model files cannot be checked: crypto.subtle needs a secure context (https or localhost); or pass integrity: false");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Reads a response body with progress. Content-Length is only a hint for the bar: with a
 * Content-Encoding it counts compressed bytes, and a cross-origin response may not expose the
 * encoding; a short body fails in the browser's own read, and the hash catches the rest. */
async function readBody(id, name, response, phase) {
  let total = Number(response.headers.get("content-length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  let last = 0;
  post(id, "progress", { file: name, phase, loaded, total });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    if (loaded > total) total = 0; // decoded bytes outgrew the header: size unknown
    if (loaded - last > 1 << 20 || loaded === total) {
      last = loaded;
      post(id, "progress", { file: name, phase, loaded, total });
    }
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.byteLength; }
  post(id, "progress", { file: name, phase, loaded, total: loaded, done: true });
  return bytes;
}

/** Bytes of one source: a URL (Cache API first, then a streamed download), or bytes.
 * A URL's bytes must have one of the sha256s `expected` (when given): a cached copy that
 * does not is evicted and downloaded again; a download that does not is an error and never
 * cached.
 * Downloads are cached by `commit()`, called once the models built from them load: a file
 * that arrives whole but is not a model (or is truncated at the source) is never cached.
 * `hits` collects the cached copies used, to evict them if the models fail to load. */
async function bytesOf(id, name, source, expected, useCache, commits, hits) {
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  if (typeof source !== "string") throw new Error(`${name}: expected a URL, an ArrayBuffer, a typed array or a File`);
  const cache = useCache && self.caches ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const cached = cache ? await cache.match(source).catch(() => undefined) : undefined;
  if (cached) {
    const bytes = await readBody(id, name, cached, "cache").catch(() => null);
    if (bytes && (!expected || expected.includes(await sha256(bytes)))) {
      hits.push(source);
      return bytes;
    }
    // Stale (the file changed) or corrupt: forget it and fetch it again.
    await cache.delete(source).catch(() => {});
  }
  let response;
  try {
    // After an evicted copy, revalidate past the HTTP cache too.
    response = await fetch(source, cached ? { cache: "no-cache" } : {});
  } catch (e) {
    throw named("IoError", `could not download ${name} from ${source}: ${e.message}`);
  }
  if (!response.ok) throw named("IoError", `could not download ${name} from ${source}: HTTP ${response.status} ${response.statusText}`.trim());
  let bytes;
  try {
    bytes = await readBody(id, name, response, "download");
  } catch (e) {
    throw named("IoError", `could not download ${name} from ${source}: the download stopped (${e.message})`);
  }
  if (expected) {
    const actual = await sha256(bytes);
    if (!expected.includes(actual)) {
      throw named("ModelFileError", `the ${name} could not be loaded: ${source} is not the file expected (sha256 ${actual}, expected ${expected.join(" or ")}; ${bytes.byteLength} bytes)`);
    }
  }
  if (cache) commits.push(() => cache.put(source, new Response(bytes)).catch(() => {}));
  return bytes;
}

/** The sha256s a source may have (a list): the manifest's, the page's own, or null for any. */
function expectedHash(key) {
  const own = settings.integrity;
  if (own === false) return null;
  if (own && typeof own === "object" && key in own) return own[key] ? [own[key]] : null;
  return [MANIFEST[key], ...(ALSO_ACCEPTED[key] ?? [])];
}

/** Loads the models from `files` on `backend`; with `state` ({ adapters, policy, otherLanguages }), restores
 * the page's tuning and rules into them before they are returned, so a failure anywhere
 * leaves nothing half-built. */
async function build(id, backend, state) {
  const f = files;
  const names = ["tokenizer", "config", "model", "heads"];
  const commits = [];
  const hits = [];
  let g;
  try {
    const [tokenizer, config, model, heads, gguf, chatProbe, safetyAdapters] = await Promise.all([
      ...names.map((n) => bytesOf(id, `filter ${n}`, f.filter[n], expectedHash(n), settings.cache, commits, hits)),
      f.chat ? bytesOf(id, "chat model", f.chat, expectedHash("chat"), settings.cache, commits, hits) : undefined,
      f.chat && f.chatProbe ? bytesOf(id, "chat probe", f.chatProbe, expectedHash("chatProbe"), settings.cache, commits, hits) : undefined,
      f.chat && f.chatProbe && f.safetyAdapters ? bytesOf(id, "safety adapters", f.safetyAdapters, expectedHash("safetyAdapters"), settings.cache, commits, hits) : undefined,
    ]);
    post(id, "progress", { file: "models", phase: "init", loaded: 0, total: 0 });
    g = await WasmGuard.create(backend, tokenizer, config, model, heads, gguf, chatProbe);
    if (safetyAdapters) await g.loadSafetyAdapters(safetyAdapters);
  } catch (e) {
    // Files that do not load from their cached copies (possible when a hash is not checked):
    // forget those copies, so that the next try downloads them again.
    g?.free();
    if (hits.length && e?.name === "ModelFileError" && self.caches) {
      const cache = await caches.open(CACHE_NAME).catch(() => null);
      await Promise.all(hits.map((h) => cache?.delete(h).catch(() => {})));
    }
    throw e;
  }
  if (state) {
    try {
      await restore(g, state);
    } catch (e) {
      g.free();
      throw e;
    }
  }
  await Promise.all(commits.map((c) => c()));
  return g;
}

/** Puts the page's tuning (adapters files) and rules back into a freshly built Guard. */
async function restore(g, { adapters, policy, otherLanguages }) {
  for (const kind of ["filter", "chat"]) {
    // The page's own earlier state, exported from this Guard: shipped labels it tuned may
    // come back (the opt-in a shared file would need; ignored by builds before it).
    if (adapters?.[kind]) await g.importAdapters(adapters[kind], { replaceShippedLabels: true });
  }
  for (const [label, rule] of Object.entries(policy ?? {})) g.setRule(label, rule.threshold, rule.action);
  if (otherLanguages) g.setOtherLanguages(otherLanguages);
}

/** Adapters of `kind` as they are now, for `saved` (kept as they were if the export fails). */
async function snapshot(kind) {
  try {
    saved[kind] = await guard.exportAdapters(kind);
  } catch (e) {
    if (isTrap(e)) throw e;
    console.warn(`webguard: could not keep a copy of the ${kind} adapters (a rebuild would lose them): ${e.message}`);
  }
  return { [kind]: saved[kind] };
}

function describe(g) {
  return {
    kind: g.backend,
    adapter: g.adapter ?? null,
    reason: g.fallbackReason ?? null,
    filterRoute: g.filterRoute,
    chat: g.hasChat ? { kind: g.chatBackend, reason: g.chatFallbackReason ?? null } : null,
    labels: g.labels,
    labelOrigins: g.labelOrigins,
    hasChat: g.hasChat,
    chatProbe: g.chatProbe ?? null,
    policy: g.policy,
    otherLanguages: g.otherLanguages,
    canTune: g.canTune,
    ...threading,
  };
}

/** After a failure on WebGPU (e.g. a lost device), rebuild on the CPU and say so. The page's
 * tuning and rules come along: the adapters as exported after each change (nothing is read
 * back from the failed GPU) and the policy. All or nothing: if the CPU Guard cannot be built
 * with them, the GPU one stays as it was and the call fails with the GPU's error. */
async function fallBackToCpu(id, error) {
  if (!guard || guard.backend !== "webgpu") return false;
  let cpu;
  try {
    cpu = await build(id, "cpu", { adapters: saved, policy: guard.policy, otherLanguages: guard.otherLanguages });
  } catch (e) {
    if (isTrap(e)) throw e;
    console.warn(`webguard: WebGPU failed (${error.message}) and the CPU could not take over: ${e.message}`);
    return false;
  }
  const old = guard;
  // The labels' origins are the old Guard's (restoring its adapters marks them "imported").
  let origins;
  try { origins = old.labelOrigins; } catch { /* keep the new Guard's */ }
  guard = cpu;
  try { old.free(); } catch { /* already gone */ }
  const info = describe(guard);
  if (origins) info.labelOrigins = origins;
  info.reason = `WebGPU failed (${error.message}); running on the CPU`;
  post(id, "backend", info);
  return true;
}

// The text each chat call has streamed to the page, by call id, while the call runs: kept
// across the CPU's second run of a call the GPU failed (see ops.chat).
const streamed = new Map();

const ops = {
  async create(id, args) {
    ({ Guard: WasmGuard, ...threading } = await loadModule(id, args.tuning === true, args.threads ?? 1, Boolean(args.files?.chat), args.backend));
    files = args.files;
    settings = { cache: args.cache !== false, integrity: args.integrity };
    // After a crash, guard.js passes the tuning and rules the page had (`restore`).
    Object.assign(saved, { filter: null, chat: null }, args.restore?.adapters);
    guard = await build(id, args.backend, args.restore);
    return describe(guard);
  },
  async classify(id, { texts }) {
    return guard.classify(texts);
  },
  async chat(id, { messages, options, abort }) {
    const flag = abort ? new Int32Array(abort) : null;
    const started = performance.now();
    let first;
    // Run again on the CPU after the GPU failed mid-answer (fallBackToCpu), the answer starts
    // over: what the page was shown already is held back, and only what comes after it is
    // sent. Should this run's answer leave what was shown (its numbers differ from the GPU's),
    // it stops there and the reply is what the page has (stopReason "gpuLost").
    const shown = streamed.get(id) ?? "";
    let text = "";
    let departed = false;
    const reply = await guard.chat(messages, options, (piece) => {
      first ??= performance.now();
      text += piece;
      if (text.length <= shown.length ? shown.startsWith(text) : text.startsWith(shown)) {
        if (text.length > shown.length) {
          streamed.set(id, text);
          post(id, "token", text.slice(Math.max(shown.length, text.length - piece.length)));
        }
        return true;
      }
      departed = true;
      return false;
    }, () => (flag ? Atomics.load(flag, 0) === 1 : false));
    // (Ending before it passed what was shown is the same: the page has more than it.)
    if ((departed || text.length < shown.length) && !reply.blocked) Object.assign(reply, { text: shown, stopReason: "gpuLost" });
    const seconds = (performance.now() - started) / 1000;
    reply.seconds = seconds;
    reply.tokensPerSecond = reply.tokens > 0 ? reply.tokens / seconds : 0;
    if (first !== undefined) reply.firstTextMs = first - started;
    return reply;
  },
  async tuneFilter(id, { examples, options, abort }) {
    const flag = abort ? new Int32Array(abort) : null;
    const report = await guard.tuneFilter(examples, options, (step) => {
      post(id, "step", step);
      return true;
    }, () => (flag ? Atomics.load(flag, 0) === 1 : false));
    return { report, info: describe(guard), saved: await snapshot("filter") };
  },
  async tuneChat(id, { pairs, options, abort }) {
    const flag = abort ? new Int32Array(abort) : null;
    const report = await guard.tuneChat(pairs, options, (step) => {
      post(id, "step", step);
      return true;
    }, () => (flag ? Atomics.load(flag, 0) === 1 : false));
    return { report, saved: await snapshot("chat") };
  },
  async exportAdapters(id, { kind }) {
    return guard.exportAdapters(kind);
  },
  async importAdapters(id, { bytes, options }) {
    const view = bytes instanceof Blob ? new Uint8Array(await bytes.arrayBuffer())
      : ArrayBuffer.isView(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : new Uint8Array(bytes);
    const kind = await guard.importAdapters(view, options ?? {});
    return { kind, info: describe(guard), saved: await snapshot(kind) };
  },
  async resetAdapters(id, { kind }) {
    guard.resetAdapters(kind);
    if (kind !== "chat") saved.filter = null;
    if (kind !== "filter") saved.chat = null;
    return { info: describe(guard), saved: { ...saved } };
  },
  async setRule(id, { label, threshold, action }) {
    // The page sends only what it changes; the rest is the rule as it is now, here, so
    // concurrent changes to one label all apply.
    const current = guard.policy[label];
    if (!current) throw named("InvalidInputError", `unknown label "${label}"`);
    guard.setRule(label, threshold ?? current.threshold, action ?? current.action);
    return guard.policy;
  },
  async setOtherLanguages(id, { choice }) {
    guard.setOtherLanguages(choice);
    return guard.otherLanguages;
  },
  async dispose() {
    guard?.free();
    guard = undefined;
    return true;
  },
};

// One operation at a time, in order: the models are not reentrant.
let queue = Promise.resolve();
self.onmessage = (event) => {
  const { id, op, args } = event.data ?? {};
  queue = queue.then(async () => {
    try {
      if (crashed) throw named(crashed.name, crashed.message);
      if (!Object.hasOwn(ops, op)) throw new Error(`unknown operation ${op}`);
      if (op !== "create" && op !== "dispose" && !guard) throw new Error("the Guard is not loaded (or was disposed)");
      let result;
      running = op;
      try {
        result = await ops[op](id, args ?? {});
      } catch (e) {
        // Only failures of the GPU itself move the work to the CPU, not bad input: the wasm
        // module names each error by its kind.
        if ((op === "classify" || op === "chat") && e?.name === "BackendError" && await fallBackToCpu(id, e)) {
          result = await ops[op](id, args ?? {});
        } else {
          throw e;
        }
      }
      running = null;
      post(id, "result", result);
    } catch (e) {
      const error = isTrap(e) ? crash(e) : { name: e?.name ?? "Error", message: e?.message ?? String(e) };
      running = null;
      post(id, "error", error);
    }
    streamed.delete(id);
  });
};
