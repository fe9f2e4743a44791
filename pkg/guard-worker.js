// webguard's worker: every model byte is fetched, cached and run here, so the page's main
// thread only renders. Spoken to by guard.js with { id, op, args } messages; answers with
// { id, type: "progress" | "token" | "backend" | "result" | "error", data }. An error's data
// is { name, message }: the name is the kind ("BackendError", ...; see guard.d.ts), which
// guard.js gives the Error it rejects with.
import init, { Guard as WasmGuard } from "./webguard.js";

const CACHE_NAME = "webguard-models-v1";
let guard;
let files; // the sources, kept to rebuild on the CPU if the GPU is lost
let settings;

const post = (id, type, data) => self.postMessage({ id, type, data });

/** An Error named by its kind, like those the wasm module throws. */
function named(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

/** Bytes of one source: a URL (Cache API first, then a streamed download), or bytes.
 * Downloads are cached by `commit()`, called once the models built from them load: a file
 * that arrives whole but is not a model (or is truncated at the source) is never cached. */
async function bytesOf(id, name, source, useCache, commits) {
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  if (typeof source !== "string") throw new Error(`${name}: expected a URL, an ArrayBuffer, a typed array or a File`);
  const cache = useCache && self.caches ? await caches.open(CACHE_NAME).catch(() => null) : null;
  let response = cache ? await cache.match(source) : undefined;
  const fromCache = Boolean(response);
  if (!response) {
    try {
      response = await fetch(source);
    } catch (e) {
      throw named("IoError", `could not download ${name} from ${source}: ${e.message}`);
    }
    if (!response.ok) throw named("IoError", `could not download ${name} from ${source}: HTTP ${response.status} ${response.statusText}`.trim());
  }
  const total = Number(response.headers.get("content-length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  let last = 0;
  const phase = fromCache ? "cache" : "download";
  post(id, "progress", { file: name, phase, loaded, total });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    if (loaded - last > 1 << 20 || loaded === total) {
      last = loaded;
      post(id, "progress", { file: name, phase, loaded, total });
    }
  }
  if (total && loaded !== total) throw named("IoError", `${name}: the download stopped at ${loaded} of ${total} bytes`);
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.byteLength; }
  post(id, "progress", { file: name, phase, loaded, total: loaded, done: true });
  if (cache && !fromCache) {
    commits.push(() => cache.put(source, new Response(bytes, { headers: { "content-length": String(loaded) } })).catch(() => {}));
  }
  return bytes;
}

async function build(id, backend) {
  const f = files;
  const names = ["tokenizer", "config", "model", "heads"];
  const commits = [];
  const [tokenizer, config, model, heads, gguf, chatProbe] = await Promise.all([
    ...names.map((n) => bytesOf(id, `filter ${n}`, f.filter[n], settings.cache, commits)),
    f.chat ? bytesOf(id, "chat model", f.chat, settings.cache, commits) : undefined,
    f.chat && f.chatProbe ? bytesOf(id, "chat probe", f.chatProbe, settings.cache, commits) : undefined,
  ]);
  post(id, "progress", { file: "models", phase: "init", loaded: 0, total: 0 });
  const g = await WasmGuard.create(backend, tokenizer, config, model, heads, gguf, chatProbe);
  await Promise.all(commits.map((c) => c()));
  return g;
}

function describe(g) {
  return {
    kind: g.backend,
    adapter: g.adapter ?? null,
    reason: g.fallbackReason ?? null,
    labels: g.labels,
    hasChat: g.hasChat,
    chatProbe: g.chatProbe ?? null,
    policy: g.policy,
  };
}

/** After a failure on WebGPU (e.g. a lost device), rebuild on the CPU and say so. */
async function fallBackToCpu(id, error) {
  if (!guard || guard.backend !== "webgpu") return false;
  const policy = guard.policy;
  try { guard.free(); } catch { /* already gone */ }
  guard = await build(id, "cpu");
  for (const [label, rule] of Object.entries(policy)) guard.setRule(label, rule.threshold, rule.action);
  const info = describe(guard);
  info.reason = `WebGPU failed (${error.message}); running on the CPU`;
  post(id, "backend", info);
  return true;
}

const ops = {
  async create(id, args) {
    await init();
    files = args.files;
    settings = { cache: args.cache !== false };
    guard = await build(id, args.backend);
    return describe(guard);
  },
  async classify(id, { texts }) {
    return guard.classify(texts);
  },
  async chat(id, { messages, options, abort }) {
    const flag = abort ? new Int32Array(abort) : null;
    const started = performance.now();
    let first;
    const reply = await guard.chat(messages, options, (piece) => {
      first ??= performance.now();
      post(id, "token", piece);
      return true;
    }, () => (flag ? Atomics.load(flag, 0) === 1 : false));
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
    return { report, info: describe(guard) };
  },
  async tuneChat(id, { pairs, options, abort }) {
    const flag = abort ? new Int32Array(abort) : null;
    return guard.tuneChat(pairs, options, (step) => {
      post(id, "step", step);
      return true;
    }, () => (flag ? Atomics.load(flag, 0) === 1 : false));
  },
  async exportAdapters(id, { kind }) {
    return guard.exportAdapters(kind);
  },
  async importAdapters(id, { bytes }) {
    const view = bytes instanceof Blob ? new Uint8Array(await bytes.arrayBuffer())
      : ArrayBuffer.isView(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : new Uint8Array(bytes);
    const kind = await guard.importAdapters(view);
    return { kind, info: describe(guard) };
  },
  async resetAdapters(id, { kind }) {
    guard.resetAdapters(kind);
    return describe(guard);
  },
  async setRule(id, { label, threshold, action }) {
    guard.setRule(label, threshold, action);
    return guard.policy;
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
  const { id, op, args } = event.data;
  queue = queue.then(async () => {
    try {
      if (!ops[op]) throw new Error(`unknown operation ${op}`);
      if (op !== "create" && op !== "dispose" && !guard) throw new Error("the Guard is not loaded (or was disposed)");
      let result;
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
      post(id, "result", result);
    } catch (e) {
      post(id, "error", { name: e?.name ?? "Error", message: e?.message ?? String(e) });
    }
  });
};
