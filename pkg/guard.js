// webguard's JavaScript API: a private chat model and toxicity filter that run in the page,
// on WebGPU or the CPU, inside a Web Worker (guard-worker.js) so the page stays responsive.
//
//   import { Guard } from "webguard";            // or "./pkg/guard.js"
//   const guard = await Guard.create({ filterUrl: "/models/all-MiniLM-L6-v2/",
//                                      chatUrl: "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
//                                      onProgress: (p) => console.log(p) });
//   await guard.classify(["you are an idiot"]);  // [{ scores, labels, flagged, otherLanguage }]
//   await guard.chat([{ role: "user", content: "Hi!" }], { onToken: (t) => show(t) });
//   for await (const chunk of await guard.chat.completions.create({ messages, stream: true })) { ... }
//   guard.dispose();
//
// Model files are cached with the Cache API (keyed by URL). Each file fetched from a URL must
// have the sha256 the package's manifest gives it (the files scripts/fetch-models.sh fetches
// and the ones shipped here; `integrity` to use other models); a cached copy that does not is
// evicted and downloaded again. Nothing is sent anywhere: the only requests are for the
// model files and this package's own files.
//
// If the wasm module dies (a Rust panic traps it) or the worker fails, every pending call
// rejects with a "CrashError" and the next call starts a new worker: the models come from the
// cache, and the page's tuning (as adapters files) and rules are restored.
//
// Errors are Errors whose `name` says the kind ("InvalidInputError", "BackendError", ...; see
// guard.d.ts). The generation and tuning options other than callbacks and `signal` are the
// Rust library's option types: their names and defaults live there, and the worker's wasm
// module checks them.

const OPTIONS = ["filterUrl", "headsUrl", "chatUrl", "filter", "chat", "chatProbe", "safetyAdapters", "backend",
  "thresholds", "policy", "otherLanguages", "onProgress", "cache", "integrity", "assetsUrl", "tuning", "threads"];
const OTHER_LANGUAGES = ["block", "judge", "allow"];
// The files `integrity` can name (the worker's manifest has the same keys).
const FILES = ["tokenizer", "config", "model", "heads", "chat", "chatProbe", "safetyAdapters"];
const CACHE_NAME = "webguard-models-v1";

/** A URL made absolute against the page, or bytes/File passed through (for the worker). */
function source(value, what) {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string" || value instanceof URL) return new URL(String(value), location.href).href;
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value) || value instanceof Blob) return value;
  throw new TypeError(`${what}: expected a URL, an ArrayBuffer, a typed array or a File`);
}

function checkKeys(object, known, what) {
  if (object === undefined || object === null) return {};
  if (typeof object !== "object") throw new TypeError(`${what} must be an object`);
  for (const k of Object.keys(object)) {
    if (!known.includes(k)) throw new TypeError(`${what}: unknown option "${k}" (known: ${known.join(", ")})`);
  }
  return object;
}

/** Options for the worker: the JS-only ones (callbacks, `signal`) taken out, the rest passed
 * on for the wasm module to check against the Rust option type. */
function splitOptions(options, jsOnly, what) {
  if (options === undefined || options === null) return [{}, {}];
  if (typeof options !== "object") throw new TypeError(`${what} must be an object`);
  const js = {};
  const rest = {};
  for (const [k, v] of Object.entries(options)) {
    if (jsOnly.includes(k)) js[k] = checkedHandler(k, v, what);
    else if (typeof v === "function") throw new TypeError(`${what}: unknown option "${k}"`);
    else rest[k] = v;
  }
  return [js, rest];
}

// A page's callback or signal, checked when it is given: a non-function callback would
// otherwise throw on the page at every later message of the call, and a non-signal be ignored.
function checkedHandler(name, value, what) {
  if (value === undefined || value === null) return undefined;
  if (name === "signal") {
    // By shape, not instanceof: a signal from an iframe's AbortController is another realm's.
    if (typeof value.aborted !== "boolean" || typeof value.addEventListener !== "function") {
      throw new TypeError(`${what}: signal must be an AbortSignal`);
    }
  } else if (typeof value !== "function") {
    throw new TypeError(`${what}: ${name} must be a function (got ${typeof value})`);
  }
  return value;
}

// Text fields of objects in a list (`examples[i].text`, `messages[i].content`) that are not
// valid UTF-16: the wasm glue would replace a lone surrogate silently and the text would be
// judged or learnt as something else (classify checks its texts in the module itself).
function checkWellFormed(list, fields, what) {
  if (!Array.isArray(list)) return;
  list.forEach((item, i) => {
    for (const field of fields) {
      const v = field === null ? item : item?.[field];
      if (typeof v === "string" && !wellFormed(v)) {
        const where = field === null ? `${what} ${i}` : `${what} ${i}: ${field}`;
        throw named("InvalidInputError", `${where} is not valid UTF-16 (it holds a lone surrogate)`);
      }
    }
  });
}

// String.prototype.isWellFormed where the browser has it (2023 on), else the same test.
const wellFormed = (v) => v.isWellFormed?.() ?? !/\p{Cs}/u.test(v);

// This package's own files: under the page's `assetsUrl` when it gives one (a bundle that
// inlined guard.js, or an IIFE bundle without import.meta), else next to this module. The
// defaults are written out as `new URL("./file", import.meta.url)`, the pattern Vite and
// webpack recognise (they copy the file); esbuild leaves it as is, relative to the bundle.
const SHIPPED = {
  "all-MiniLM-L6-v2.int8.safetensors": () => new URL("./all-MiniLM-L6-v2.int8.safetensors", import.meta.url),
  "filter-heads.safetensors": () => new URL("./filter-heads.safetensors", import.meta.url),
  "chat-probe.safetensors": () => new URL("./chat-probe.safetensors", import.meta.url),
  "chat-safety-adapters.safetensors": () => new URL("./chat-safety-adapters.safetensors", import.meta.url),
};

// An IIFE bundle has no import.meta.url: without assetsUrl the files cannot be found.
function needAssets() {
  if (!import.meta.url) throw new TypeError("this bundle has no import.meta.url (an IIFE bundle?): give Guard.create({ assetsUrl })");
}

function shipped(assets, name) {
  if (!assets) needAssets();
  return (assets ? new URL(name, assets) : SHIPPED[name]()).href;
}

function newWorker(assets) {
  if (assets) return new Worker(new URL("guard-worker.js", assets), { type: "module", name: "webguard" });
  needAssets();
  return new Worker(new URL("./guard-worker.js", import.meta.url), { type: "module", name: "webguard" });
}

/** The chat probe to load: the shipped one by default (with a chat model only), none for
 * `false`, or the page's own URL or bytes. */
function probeSource(value, hasChat, assets) {
  if (value === false || value === null) return undefined;
  if (value === undefined || value === true) return hasChat ? shipped(assets, "chat-probe.safetensors") : undefined;
  if (!hasChat) throw new TypeError("chatProbe was given without a chat model: give chatUrl or chat too");
  return source(value, "chatProbe");
}

/** The safety adapters to load: the shipped ones by default (with a chat model and its probe
 * only: they answer what the probe scores close to its threshold), none for `false`, or the
 * page's own URL or bytes. */
function safetyAdaptersSource(value, hasProbe, assets) {
  if (value === false || value === null) return undefined;
  if (value === undefined || value === true) return hasProbe ? shipped(assets, "chat-safety-adapters.safetensors") : undefined;
  if (!hasProbe) throw new TypeError("safetyAdapters need the chat model and its probe: give chatUrl or chat, and leave chatProbe on");
  return source(value, "safetyAdapters");
}

/** `integrity`: true/undefined (the manifest), false (no check), or `{ file: sha256 | null }`
 * overriding single files (null: not checked). */
function integrityOption(value) {
  if (value === undefined || value === true) return undefined;
  if (value === false) return false;
  const o = checkKeys(value, FILES, "integrity");
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && v !== false && !(typeof v === "string" && /^[0-9a-f]{64}$/.test(v))) {
      throw new TypeError(`integrity.${k}: expected a sha256 as 64 lowercase hex digits, or null`);
    }
  }
  return { ...o };
}

/** An Error named by its kind, like those from the worker. */
function named(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

// chat.completions.create's request fields, and the ChatOptions each one is.
const COMPLETION_OPTIONS = { max_tokens: "maxTokens", max_completion_tokens: "maxTokens", temperature: "temperature",
  top_p: "topP", top_k: "topK", repetition_penalty: "repetitionPenalty", seed: "seed", stop: "stop" };
const COMPLETION_KEYS = ["messages", "stream", "signal", "model", ...Object.keys(COMPLETION_OPTIONS)];

/** A Reply in chat completion terms. */
function finishReason(reply) {
  if (reply.blocked) return "content_filter";
  return { maxTokens: "length", cancelled: "abort" }[reply.stopReason] ?? "stop";
}
function usage(reply) {
  return { prompt_tokens: reply.promptTokens, completion_tokens: reply.tokens, total_tokens: reply.promptTokens + reply.tokens };
}
function moderation({ blocked, reason, input, output, warnings, chatJudge, answerJudge, droppedTurns, safetyAdapters, otherLanguage }) {
  return { blocked, reason, input, output, warnings, chatJudge, answerJudge, droppedTurns, safetyAdapters, otherLanguage };
}

export class Guard {
  #worker;
  #next = 1;
  #pending = new Map();
  #info;
  #onProgress;
  #config; // what `create` sent the worker, to load the models again after a crash
  #adapters = { filter: null, chat: null }; // the page's tuning as adapters files (from the worker)
  #assets; // the page's assetsUrl, for a new worker after a crash
  #reviving = null; // the promise of a new worker being loaded after a crash
  #upgrading = null; // the promise of the move to the tuning module (#loadTuning)
  #disposed = false;

  /** The callback API, `guard.chat(messages, options)` (see #chat), and beside it the shape
   *  of OpenAI-style chat APIs, `guard.chat.completions.create(request)` (see #completions). */
  chat = Object.assign((messages, options) => this.#chat(messages, options),
    { completions: { create: (request) => this.#completions(request) } });

  constructor(worker) {
    this.#attach(worker);
  }

  /** Listens to `worker`; messages and errors from an older (crashed) worker are ignored. */
  #attach(worker) {
    this.#worker = worker;
    worker.onmessage = (e) => { if (worker === this.#worker) this.#receive(e.data); };
    // An uncaught error in the worker (its script failed to load, or escaped the worker's own
    // handlers) or a message that cannot be read: the calls waiting on it would never settle.
    worker.onerror = (e) => {
      e.preventDefault?.();
      this.#crash(worker, named("CrashError", `the webguard worker failed (${e.message ?? "unknown error"}); the Guard reloads on the next call`));
    };
    worker.onmessageerror = () => {
      this.#crash(worker, named("CrashError", "the webguard worker sent a message that could not be read; the Guard reloads on the next call"));
    };
  }

  /** The worker died or its wasm module trapped: it is stopped, every call waiting on it
   *  rejects with `error`, and the next call loads a new one (see #revive). */
  #crash(worker, error) {
    // (No worker: it was disposed or already stopped, e.g. an abort after dispose().)
    if (!worker || worker !== this.#worker) return;
    worker.terminate();
    this.#worker = undefined;
    this.#failAll(error);
  }

  /**
   * Loads the filter (and the chat model when `chatUrl`/`chat` is given) in a worker.
   * Options: `filterUrl` (folder with MiniLM's tokenizer.json and config.json), the encoder's
   * weights (default: the 8-bit file shipped in this package, all-MiniLM-L6-v2.int8.safetensors,
   * 19.0 MB; `filter: { model: url }` for another, e.g. MiniLM's f32 model.safetensors, 91 MB),
   * `headsUrl` (default: the heads file shipped in this package), `chatUrl` (SmolLM2's GGUF),
   * or `filter: { tokenizer, config, model, heads }` / `chat` as ArrayBuffers or Files;
   * `chatProbe`: the chat model's harmful-request probe, which judges every conversation from
   * the model's own states before it answers (default: chat-probe.safetensors shipped in this
   * package, loaded with the chat model; `false` turns it off; or a URL / bytes of another);
   * `safetyAdapters`: LoRA adapters that teach the chat model to refuse harmful requests,
   * used for the answer when the probe scores a conversation close to its threshold but lets
   * it through (a second line behind the screens, on the CPU backend: the WebGPU engine applies
   * no adapters yet; `reply.safetyAdapters` says when; default:
   * chat-safety-adapters.safetensors shipped in this package, with the chat probe; `false`
   * turns them off; or a URL / bytes of adapters written by tuneChat/tune-chat that start
   * after the probe's blocks);
   * `backend`: "auto" | "webgpu" | "cpu"; `thresholds: { label: number }`;
   * `policy: { label: { threshold, action: "block" | "warn" | "allow" } }`;
   * `otherLanguages: "block" | "judge" | "allow"` (default "block"): what chat does with a user
   * or system message in a language other than English, which the guard's judges cannot
   * read (see `setOtherLanguages`);
   * `onProgress({ file, phase: "download" | "cache" | "module" | "init", loaded, total, done })`;
   * `cache` (default true); `integrity`: the sha256 each file fetched from a URL must have
   * (default: this package's manifest of the shipped models; `{ chat: "<sha256>" }` for
   * another chat model, `{ chat: null }` to skip one file, `false` to check none);
   * `assetsUrl`: the folder serving this package's own files (worker, wasm, .safetensors;
   * default: next to guard.js, i.e. beside the bundle when a bundler inlined it);
   * `tuning` (default false): load the module with the tuning code now. Without it the Guard
   * loads the smaller module (no autodiff, no optimiser) and, on the first tuneFilter/tuneChat,
   * moves to a new worker with the tuning module (the models load again from the cache, the
   * page's rules and adapters come along: a few seconds once).
   * `threads` (an integer 1-16; default min(navigator.hardwareConcurrency, 4)): threads for
   * the chat model's products on the CPU. More than one needs a chat model on the CPU
   * (backend "cpu", or "auto" without a WebGPU adapter: the threaded module has no WebGPU), a
   * cross-origin isolated page (COOP/COEP headers) and the module without tuning; otherwise
   * one thread runs (the single-threaded module), and
   * `guard.backend.threadsReason` says why.
   */
  static async create(options = {}) {
    const o = checkKeys(options, OPTIONS, "Guard.create options");
    const backend = o.backend ?? "auto";
    if (!["auto", "webgpu", "cpu"].includes(backend)) {
      throw new TypeError(`backend must be "auto", "webgpu" or "cpu" (got ${JSON.stringify(backend)})`);
    }
    const f = checkKeys(o.filter, ["tokenizer", "config", "model", "heads"], "filter");
    const folder = (url) => url === undefined ? undefined : new URL(String(url).replace(/\/?$/, "/"), location.href);
    const dir = folder(o.filterUrl);
    const assets = folder(o.assetsUrl)?.href;
    const file = (name, given) => source(given ?? (dir && new URL(name, dir).href), `filter.${name}`);
    const filter = {
      tokenizer: file("tokenizer.json", f.tokenizer),
      config: file("config.json", f.config),
      // The encoder in 8 bits (webguard quantize-filter; a quarter of the f32 download).
      model: source(f.model ?? shipped(assets, "all-MiniLM-L6-v2.int8.safetensors"), "filter.model"),
      heads: source(f.heads ?? o.headsUrl ?? shipped(assets, "filter-heads.safetensors"), "headsUrl"),
    };
    for (const [k, v] of Object.entries(filter)) {
      if (v === undefined) throw new TypeError(`the filter's ${k} file is missing: give filterUrl or filter.${k}`);
    }
    const chat = source(o.chat ?? o.chatUrl, "chatUrl");
    const chatProbe = probeSource(o.chatProbe, chat !== undefined, assets);
    const safetyAdapters = safetyAdaptersSource(o.safetyAdapters, chatProbe !== undefined, assets);
    const integrity = integrityOption(o.integrity);
    if (o.tuning !== undefined && typeof o.tuning !== "boolean") {
      throw new TypeError(`tuning must be true or false (got ${JSON.stringify(o.tuning)})`);
    }
    if (o.otherLanguages !== undefined && !OTHER_LANGUAGES.includes(o.otherLanguages)) {
      throw new TypeError(`otherLanguages must be "block", "judge" or "allow" (got ${JSON.stringify(o.otherLanguages)})`);
    }
    const threads = o.threads === undefined ? Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 4)) : o.threads;
    if (!Number.isInteger(threads) || threads < 1 || threads > 16) {
      throw new TypeError(`threads must be an integer from 1 to 16 (got ${JSON.stringify(o.threads)})`);
    }
    const onProgress = checkedHandler("onProgress", o.onProgress, "Guard.create options");
    const guard = new Guard(newWorker(assets));
    guard.#onProgress = onProgress;
    guard.#assets = assets;
    guard.#config = { backend, files: { filter, chat, chatProbe, safetyAdapters }, cache: o.cache !== false, integrity, tuning: o.tuning === true, threads };
    try {
      guard.#info = await guard.#call("create", guard.#config);
      for (const [label, threshold] of Object.entries(o.thresholds ?? {})) {
        await guard.setRule(label, { threshold });
      }
      for (const [label, rule] of Object.entries(o.policy ?? {})) await guard.setRule(label, rule);
      if (o.otherLanguages !== undefined) await guard.setOtherLanguages(o.otherLanguages);
    } catch (e) {
      guard.dispose();
      throw e;
    }
    return guard;
  }

  /** Deletes the cached model files (all Guards' caches in this origin). */
  static async clearCache() {
    return caches.delete(CACHE_NAME);
  }

  /** `{ kind: "webgpu" | "cpu", adapter, reason, threads, threadsReason, filter, chat }`: what
   *  runs, on which adapter, or why the CPU; the threads the module runs the chat model's CPU
   *  products on, and why fewer than asked (null when as asked); where the filter's batches and
   *  the chat model run (chat null without a chat model). */
  get backend() {
    const { kind, adapter, reason, threads, threadsReason, filterRoute, chat } = this.#info;
    const filter = filterRoute ? { gpuFromBatch: filterRoute.gpuFromBatch ?? null, reason: filterRoute.reason, measured: filterRoute.measured ?? null } : null;
    return { kind, adapter, reason, threads: threads ?? 1, threadsReason: threadsReason ?? null, filter, chat: chat ?? null };
  }

  /** Whether the tuning module is loaded (`tuning: true`, or after the first tuning call). */
  get tuning() { return this.#info.canTune === true; }

  /** Filter labels, e.g. ["offensive", "hate", "harmful"]. */
  get labels() { return [...this.#info.labels]; }

  /** Where each label came from: `{ offensive: "shipped", spoiler: "taught", ... }` ("shipped":
   *  loaded with the Guard and unchanged; "taught": tuned here; "imported": from adapters). */
  get labelOrigins() { return { ...this.#info.labelOrigins }; }

  /** Whether a chat model was loaded. */
  get hasChat() { return this.#info.hasChat; }

  /** The chat model's harmful-request probe, `{ threshold, layers, answerThreshold,
   *  safetyAdaptersFrom }` (the last null without safety adapters), or null when it is off
   *  (`chatProbe: false`) or there is no chat model. Replies carry its score as `chatJudge`
   *  (after earlier turns or a system prompt, the higher of the conversation's score and the
   *  last user message's read on its own: either blocks). */
  get chatProbe() { return this.#info.chatProbe ? structuredClone(this.#info.chatProbe) : null; }

  /** `{ label: { threshold, action } }`. */
  get policy() { return structuredClone(this.#info.policy); }

  /** Changes one label's threshold and/or action ("block", "warn" or "allow"). */
  async setRule(label, rule = {}) {
    // Checked here: the wasm glue reads a non-string as a string's pointer (a trap, not an error).
    if (typeof label !== "string") throw new TypeError("setRule: the label must be a string");
    if (rule === null || typeof rule !== "object") throw new TypeError("setRule: the rule must be an object { threshold, action }");
    const { threshold, action } = rule;
    if (threshold !== undefined && typeof threshold !== "number") throw new TypeError("setRule: threshold must be a number");
    if (action !== undefined && typeof action !== "string") throw new TypeError('setRule: action must be "block", "warn" or "allow"');
    const current = Object.hasOwn(this.#info.policy, label) ? this.#info.policy[label] : undefined;
    if (!current) throw named("InvalidInputError", `unknown label "${label}" (labels: ${this.#info.labels.join(", ")})`);
    // A rule that gives neither changes nothing (a Partial<Rule> may be empty, and
    // Guard.create's `policy: { hate: {} }` or `thresholds: { hate: undefined }` too).
    if (threshold === undefined && action === undefined) return;
    // Only the fields given: the worker fills the others from the rule it holds when it applies
    // this one, so concurrent calls on one label do not undo each other.
    this.#info.policy = await this.#call("setRule", { label, threshold, action });
  }

  /** What chat does with a user or system message in a language other than English:
   *  "block" (the default), "judge" or "allow". */
  get otherLanguages() { return this.#info.otherLanguages; }

  /** Sets what chat does with a message in a language other than English (the guard's judges
   *  read English; `reply.otherLanguage` names the language found): "block" refuses the turn
   *  and says why; "judge" judges it as if it were English (the chat probe then stops many
   *  harmless requests and misses some harmful ones); "allow" lets the chat probe step aside
   *  for it, while the filter and the answer screens still judge. */
  async setOtherLanguages(choice) {
    if (!OTHER_LANGUAGES.includes(choice)) {
      throw new TypeError(`setOtherLanguages: use "block", "judge" or "allow" (got ${JSON.stringify(choice)})`);
    }
    this.#info.otherLanguages = await this.#call("setOtherLanguages", { choice });
  }

  /** One verdict per text: `{ scores: { offensive, hate, harmful }, labels, flagged,
   *  otherLanguage }` (`otherLanguage`: the language other than English the text is in, whose
   *  scores mean little; null for English). */
  async classify(texts) {
    if (typeof texts === "string") texts = [texts];
    return this.#call("classify", { texts });
  }

  /**
   * Answers the last user message of `messages` ([{ role, content }]) with moderation: the
   * message is screened first, the answer sentence by sentence before it is shown. Resolves to
   * `{ text, blocked, reason, input, output, warnings, tokens, tokensPerSecond, stopReason,
   * chatJudge }` (chatJudge: the chat probe's score of the conversation, or null).
   * Options (ChatOptions in guard.d.ts, with their defaults): maxTokens, temperature, topK,
   * topP, repetitionPenalty, seed, stop, `onToken(text)`, `signal` (an AbortSignal: stops
   * generation; the promise resolves with what was shown).
   */
  async #chat(messages, options = {}) {
    checkWellFormed(messages, ["role", "content"], "message");
    const [{ onToken, signal }, generation] = splitOptions(options, ["onToken", "signal"], "chat options");
    checkWellFormed(generation.stop, [null], "stop string");
    if (!this.#info.hasChat) throw named("InvalidInputError", "this Guard was created without a chat model (give chatUrl)");
    if (signal?.aborted) throw signal.reason ?? new DOMException("aborted", "AbortError");
    // The worker is busy while it generates, so a message would arrive too late: it reads a
    // shared flag after each piece instead (needs cross-origin isolation, i.e. COOP/COEP).
    const abort = self.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    const stop = () => { if (abort) Atomics.store(new Int32Array(abort), 0, 1); };
    signal?.addEventListener("abort", stop, { once: true });
    try {
      // After an abort the reply is cut to what was shown: with the flag the worker may have
      // cleared a piece more before it read it, and without one it finishes the answer unseen.
      return await this.#call("chat", { messages, options: generation, abort }, { onToken, signal, cutOnAbort: true });
    } finally {
      signal?.removeEventListener("abort", stop);
    }
  }

  /**
   * `chat.completions.create({ messages, stream, max_tokens, temperature, top_p, top_k,
   * repetition_penalty, seed, stop, signal })`: #chat in the shape of OpenAI-style chat APIs
   * (`model` is accepted and ignored). Resolves to `{ choices: [{ message, finish_reason }],
   * usage, moderation }`, or with `stream: true` to an async iterable of chunks
   * (`choices[0].delta.content`; the last has finish_reason, usage and moderation). Leaving the
   * loop early stops generation. A blocked reply's refusal is streamed as the last content.
   */
  async #completions(request) {
    const { messages, stream = false, signal, model: _, ...rest } = checkKeys(request, COMPLETION_KEYS, "chat.completions.create");
    if (rest.max_tokens != null && rest.max_completion_tokens != null) {
      throw new TypeError("chat.completions.create: give max_tokens or max_completion_tokens, not both");
    }
    const options = { signal };
    for (const [k, v] of Object.entries(rest)) {
      if (v !== undefined && v !== null) options[COMPLETION_OPTIONS[k]] = k === "stop" && typeof v === "string" ? [v] : v;
    }
    const head = { id: `chatcmpl-${Date.now().toString(36)}-${this.#next}`, created: Math.floor(Date.now() / 1000) };
    if (!stream) {
      const reply = await this.#chat(messages, options);
      const choice = { index: 0, message: { role: "assistant", content: reply.text }, finish_reason: finishReason(reply) };
      return { ...head, object: "chat.completion", choices: [choice], usage: usage(reply), moderation: moderation(reply) };
    }
    // The pieces onToken receives wait in `pieces` until the caller's loop asks for them.
    const pieces = [];
    let wake = () => {};
    let settled = false;
    const stop = new AbortController();
    const reply = this.#chat(messages, {
      ...options, signal: signal ? AbortSignal.any([signal, stop.signal]) : stop.signal,
      onToken: (text) => { pieces.push(text); wake(); },
    });
    reply.catch(() => {}).finally(() => { settled = true; wake(); }); // the loop sees the error
    let first = true; // the first content chunk also has the role
    const chunk = (delta, finish = null) => {
      if (first && delta.content !== undefined) [first, delta] = [false, { role: "assistant", ...delta }];
      return { ...head, object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: finish }] };
    };
    return (async function* () {
      try {
        while (pieces.length || !settled) {
          if (pieces.length) yield chunk({ content: pieces.shift() });
          else await new Promise((resolve) => { wake = resolve; });
        }
        const r = await reply;
        if (r.blocked) yield chunk({ content: first ? r.text : `\n\n${r.text}` });
        yield { ...chunk({}, finishReason(r)), usage: usage(r), moderation: moderation(r) };
      } finally {
        stop.abort(); // the caller left the loop early: stop generating
      }
    })();
  }

  /**
   * Teaches the filter from labelled texts, `[{ text, label, value }]`: a new label (e.g.
   * "spoiler", from as few as 8 examples, both classes) or an existing one. Options
   * (TuneFilterOptions in guard.d.ts, with their defaults): `steps`, `learningRate`, `seed`,
   * `onStep({ step, steps, loss, millis })`, `signal` (an AbortSignal: cancels; the filter
   * stays as it was). New labels appear in `labels`, `policy` (threshold 0.5, action block)
   * and every verdict. Resolves to `{ labels, newLabels, finalLoss, examples }`.
   */
  async tuneFilter(examples, options = {}) {
    checkWellFormed(examples, ["text", "label"], "example");
    const { report, info, saved } = await this.#tune("tuneFilter", { examples }, options);
    Object.assign(this.#info, info);
    Object.assign(this.#adapters, saved);
    return report;
  }

  /**
   * Instruction-tunes the chat model with LoRA from `[{ prompt, response }]` pairs (the loss
   * on the response only). Options (TuneChatOptions in guard.d.ts, with their defaults):
   * `steps`, `learningRate`, `rank`, `targets` (any of q, k, v, o, gate, up, down),
   * `batchSize`, `seed`, `onStep`, `signal` (cancels; the model stays as it was). Resolves to
   * `{ pairs, firstLoss, finalLoss, parameters }`; later `chat` calls use the adapters.
   */
  async tuneChat(pairs, options = {}) {
    if (!this.#info.hasChat) throw named("InvalidInputError", "this Guard was created without a chat model (give chatUrl)");
    checkWellFormed(pairs, ["prompt", "response"], "pair");
    const { report, saved } = await this.#tune("tuneChat", { pairs }, options);
    Object.assign(this.#adapters, saved);
    return report;
  }

  async #tune(op, data, options) {
    const [{ onStep, signal }, tuning] = splitOptions(options, ["onStep", "signal"], `${op} options`);
    if (signal?.aborted) throw signal.reason ?? new DOMException("aborted", "AbortError");
    if (!this.#config.tuning) await this.#loadTuning();
    if (signal?.aborted) throw signal.reason ?? new DOMException("aborted", "AbortError");
    const abort = self.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    // `control.worker`: the worker this call was posted to (#post sets it). Cancelled before
    // that (the call waits for the tuning module or a reload), it is never posted; after,
    // without a shared flag the worker cannot be told while it tunes, so that worker (only
    // it, never a newer one) is stopped, and the next call loads a new one with the page's
    // adapters as they were before this run.
    const control = { cancelled: false, worker: undefined };
    const stop = () => {
      control.cancelled = true;
      if (abort) Atomics.store(new Int32Array(abort), 0, 1);
      else if (control.worker) this.#crash(control.worker, named("CancelledError", `${op} was cancelled: this page is not cross-origin isolated, so the worker was stopped (calls in flight were cancelled with it) and reloads on the next call; the model is as it was`));
    };
    signal?.addEventListener("abort", stop, { once: true });
    try {
      // onStep returning false cancels as the signal does.
      return await this.#call(op, { ...data, options: tuning, abort }, { onStep, cancel: stop, control });
    } finally {
      signal?.removeEventListener("abort", stop);
    }
  }

  /**
   * Tuned adapters as bytes (safetensors) to save and load back with importAdapters:
   * `kind` "filter" (default: the filter's tuned and new labels) or "chat" (LoRA adapters).
   */
  async exportAdapters(kind = "filter") {
    if (typeof kind !== "string") throw new TypeError('exportAdapters: kind must be "filter" or "chat"');
    return this.#call("exportAdapters", { kind });
  }

  /** Loads adapters from exportAdapters (bytes or a File) made from the same base models;
   *  resolves to the kind they were ("filter" or "chat"). `options` are the wasm module's
   *  import options (`{ replaceShippedLabels }`: let filter adapters change a shipped label). */
  async importAdapters(bytes, options = {}) {
    if (!(bytes instanceof ArrayBuffer || ArrayBuffer.isView(bytes) || bytes instanceof Blob)) {
      throw new TypeError("importAdapters expects an ArrayBuffer, a typed array or a File");
    }
    const { kind, info, saved } = await this.#call("importAdapters", { bytes, options });
    Object.assign(this.#info, info);
    Object.assign(this.#adapters, saved);
    return kind;
  }

  /** Forgets tuning: `kind` "filter", "chat" or "all" (default). */
  async resetAdapters(kind = "all") {
    if (typeof kind !== "string") throw new TypeError('resetAdapters: kind must be "filter", "chat" or "all"');
    const { info, saved } = await this.#call("resetAdapters", { kind });
    Object.assign(this.#info, info);
    Object.assign(this.#adapters, saved);
  }

  /** Frees the models (GPU and wasm memory) and stops the worker. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#failAll(new Error("the Guard was disposed"));
  }

  #call(op, args, handlers = {}) {
    if (this.#disposed) return Promise.reject(new Error("the Guard was disposed"));
    if (this.#upgrading) {
      const again = () => this.#call(op, args, handlers);
      return this.#upgrading.then(again, again);
    }
    if (this.#worker && !this.#reviving) return this.#post(op, args, handlers);
    // The worker crashed (or is being replaced): calls wait for the new one, in order.
    return this.#revive().then(() => this.#post(op, args, handlers));
  }

  #post(op, args, handlers = {}) {
    if (this.#disposed) return Promise.reject(new Error("the Guard was disposed"));
    if (!this.#worker) return Promise.reject(named("CrashError", "the webguard worker crashed; the Guard reloads on the next call"));
    // A tuning call cancelled while it waited is not sent at all (#tune).
    if (handlers.control?.cancelled) return Promise.reject(named("CancelledError", `${op} was cancelled before it started; the model is as it was`));
    const id = this.#next++;
    const entry = { ...handlers };
    const reply = new Promise((resolve, reject) => {
      Object.assign(entry, { resolve, reject });
      try {
        this.#worker.postMessage({ id, op, args });
        if (handlers.control) handlers.control.worker = this.#worker;
      } catch (e) {
        // A function, symbol or detached buffer in the arguments (DataCloneError): nothing was
        // sent, so nothing may stay pending (#loadTuning waits for every pending call).
        reject(new TypeError(`${op}: its arguments cannot be sent to the worker (${e?.message ?? e})`));
        return;
      }
      this.#pending.set(id, entry);
    });
    entry.settled = reply.then(() => {}, () => {}); // for #loadTuning, which waits on it
    return reply;
  }

  /** After a crash: a new worker with the same model files (from the cache), the page's tuning
   *  and its rules. Concurrent calls share one attempt; a failed one is tried again by the
   *  next call. */
  #revive(why = "after its worker crashed") {
    this.#reviving ??= (async () => {
      this.#attach(newWorker(this.#assets));
      // Where a GPU failure already moved the models to the CPU, they stay there.
      const backend = this.#info?.kind === "cpu" ? "cpu" : this.#config.backend;
      const restore = { adapters: { ...this.#adapters }, policy: this.#info?.policy, otherLanguages: this.#info?.otherLanguages };
      try {
        const info = await this.#post("create", { ...this.#config, backend, restore });
        // The origins are the crashed worker's (restoring its adapters marks them "imported").
        const labelOrigins = this.#info?.labelOrigins ?? info.labelOrigins;
        this.#info = { ...info, labelOrigins, reason: info.reason ?? this.#info?.reason ?? null };
      } catch (e) {
        this.#worker?.terminate();
        this.#worker = undefined;
        // Disposed meanwhile (e.g. while moving to the tuning module): what every call says then.
        if (this.#disposed) throw new Error("the Guard was disposed");
        throw named(e?.name ?? "Error", `the Guard could not be reloaded ${why}: ${e?.message ?? e}`);
      }
    })().finally(() => { this.#reviving = null; });
    return this.#reviving;
  }

  /** The first tuning call of a Guard created without `tuning`: once the calls in flight have
   *  settled, the worker is replaced by one running the tuning module, with the same model
   *  files, rules and adapters (#revive). A new worker rather than a second module in the same
   *  one: a wasm module's memory never shrinks, so the first one's would stay allocated. Calls
   *  made meanwhile wait for the new worker, in order. */
  #loadTuning() {
    this.#upgrading ??= (async () => {
      this.#config.tuning = true;
      try {
        // Each call in flight is waited for once (one that settled is never waited for again).
        const waited = new Set();
        for (;;) {
          const inFlight = [...this.#pending.values()].filter((p) => !waited.has(p));
          if (inFlight.length === 0) break;
          for (const p of inFlight) waited.add(p);
          await Promise.allSettled(inFlight.map((p) => p.settled));
        }
        if (this.#worker && !this.#reviving) {
          const old = this.#worker;
          this.#worker = undefined;
          old.terminate();
        }
        await this.#revive("with the tuning module");
      } catch (e) {
        this.#config.tuning = false;
        throw e;
      }
    })().finally(() => { this.#upgrading = null; });
    return this.#upgrading;
  }

  #receive({ id, type, data }) {
    const p = this.#pending.get(id);
    if (type === "progress") { this.#onProgress?.(data); return; }
    if (type === "fatal") { this.#crash(this.#worker, named(data.name, data.message)); return; }
    if (type === "backend") { Object.assign(this.#info ??= {}, data); return; }
    if (!p) return;
    if (type === "token") {
      // Without a shared flag, an abort at least stops the page from showing more.
      if (!p.signal?.aborted) {
        p.shown = (p.shown ?? "") + data;
        p.onToken?.(data);
      }
      return;
    }
    if (type === "step") { if (p.onStep?.(data) === false) p.cancel?.(); return; }
    this.#pending.delete(id);
    if (type === "result" && p.cutOnAbort && p.signal?.aborted && !data.blocked) {
      p.resolve({ ...data, text: p.shown ?? "", stopReason: "cancelled" });
    } else if (type === "result") p.resolve(data);
    else p.reject(named(data.name ?? "Error", data.message));
  }

  #failAll(error) {
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
  }
}
