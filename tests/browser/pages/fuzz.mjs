// Random calls against the Guard API (tests/browser/fuzz.test.mjs drives it): odd options,
// huge and empty inputs, concurrent calls, aborts, dispose mid-call. Every call is recorded
// with how it settled; the driver checks that each settled in time and lists any crash.
import { Guard } from "/pkg/guard.js";
import { chatUrl, filterUrl } from "./common.mjs";

// mulberry32: a seeded generator, so a failing run can be replayed (seed in the output).
let seed = 1;
const random = () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const int = (n) => Math.floor(random() * n);
const pick = (xs) => xs[int(xs.length)];
const chance = (p) => random() < p;

const WORDS = ["you", "are", "an", "idiot", "have", "a", "nice", "day", "bomb", "kill", "the", "process",
  "Snape", "kills", "Dumbledore", "<|im_end|>", "<|endoftext|>", "<|im_start|>system", "[CLS]", "[SEP]", "[PAD]",
  "ﬁ", "Ⅻ", "𝐛𝐨𝐦𝐛", "b0mb", "ｆｕｌｌ", "é", "e\u0301", "\u200b", "\u202e", "\ud800", "\udfff", "\u0000", "\t", "\n",
  "🙂", "👩‍👩‍👧", "中文", "العربية", "\u{10ffff}", "\uFEFF", "a".repeat(300), ". ", ".", "!", "?", "…"];
const text = () => {
  const r = random();
  if (r < 0.08) return "";
  if (r < 0.12) return pick([" ", "\n\n", "\u0000", "\ud800", "<|im_end|>", ". . . .", "\u200b".repeat(50)]);
  if (r < 0.14) return pick(WORDS).repeat(1 + int(3000)); // long, one repeated piece
  const n = 1 + int(chance(0.1) ? 400 : 20);
  return Array.from({ length: n }, () => pick(WORDS)).join(pick([" ", "", "  ", "\n"]));
};
const oddValue = () => pick([undefined, null, 0, -1, 1, 0.5, NaN, Infinity, -Infinity, 1e9, -1e9, 2 ** 53, "",
  "x", "1", true, false, [], {}, [1], { a: 1 }, 1.5, -0, 2 ** 31, 2 ** 32, 255, 256, 65536]);
const labels = () => pick(["offensive", "hate", "harmful", "spoiler", "", "OFFENSIVE", "a,b", " x", "x ", "a".repeat(60),
  "<b>", "\u0000", "新", "label-" + int(5)]);

const texts = () => {
  const r = random();
  if (r < 0.05) return pick([[], "", "one string", null, undefined, 5, {}, [null], [1, 2], [[]], [{}], [undefined]]);
  if (r < 0.1) return Array.from({ length: 50 + int(200) }, () => pick(WORDS)); // many short texts
  return Array.from({ length: 1 + int(4) }, text);
};
const examples = () => {
  const r = random();
  if (r < 0.15) return pick([[], null, "x", [{}], [{ text: "a", label: "spam" }], [{ text: 1, label: "spam", value: true }]]);
  const label = chance(0.7) ? pick(["spoiler", "offensive", "spam"]) : labels();
  const n = chance(0.2) ? int(4) : 4 + int(8);
  return Array.from({ length: n }, (_, i) => ({
    text: chance(0.1) ? oddValue() : text(), label: chance(0.05) ? oddValue() : label,
    value: chance(0.05) ? oddValue() : i % 2 === 0,
  }));
};
const tuneOptions = () => {
  const o = {};
  if (chance(0.8)) o.steps = chance(0.7) ? 1 + int(2) : oddValue();
  if (chance(0.3)) o.learningRate = chance(0.5) ? pick([1e-3, 1e-2, 0.1, 10, 1e6]) : oddValue();
  if (chance(0.2)) o.seed = oddValue();
  if (chance(0.05)) o[pick(["stepz", "lr", "__proto__x"])] = 1;
  if (chance(0.1)) o.onStep = () => chance(0.5);
  return o;
};
const messages = () => {
  const r = random();
  if (r < 0.1) return pick([[], null, "hi", [{}], [{ role: "user" }], [{ role: "wizard", content: "hi" }], [{ role: "user", content: 5 }],
    [{ role: "assistant", content: "hello" }], [{ role: "system", content: "be nice" }]]);
  const turns = 1 + int(3);
  const out = [];
  for (let i = 0; i < turns; i++) {
    out.push({ role: i % 2 === 0 ? "user" : "assistant", content: chance(0.03) ? "word ".repeat(200 + int(800)) : text() });
  }
  if (out.at(-1).role !== "user") out.push({ role: "user", content: text() });
  return out;
};
const chatOptions = () => {
  const o = { maxTokens: chance(0.9) ? int(5) : oddValue() };
  if (chance(0.3)) o.temperature = chance(0.5) ? random() * 2 : oddValue();
  if (chance(0.2)) o.topK = chance(0.5) ? int(50) : oddValue();
  if (chance(0.2)) o.topP = chance(0.5) ? random() : oddValue();
  if (chance(0.2)) o.repetitionPenalty = chance(0.5) ? 0.5 + random() : oddValue();
  if (chance(0.2)) o.seed = oddValue();
  if (chance(0.3)) o.stop = pick([[". "], ["."], [""], ["\n"], [], "x", [5], [". ", "!", "?"], ["e"]]);
  if (chance(0.1)) o.onToken = () => {};
  if (chance(0.05)) o.maxTokenz = 3;
  return o;
};

/** One random call on `g` (its promise, and what it was). */
function call(g, withChat) {
  const r = random();
  let op, args;
  if (withChat && r < 0.5) { op = "chat"; args = [messages(), chatOptions()]; }
  else if (r < 0.45) { op = "classify"; args = [texts()]; }
  else if (r < 0.6) { op = "setRule"; args = [labels(), chance(0.1) ? oddValue() : { threshold: chance(0.5) ? random() : oddValue(), action: chance(0.6) ? pick(["block", "warn", "allow"]) : oddValue() }]; }
  else if (r < 0.7) { op = "tuneFilter"; args = [examples(), tuneOptions()]; }
  else if (r < 0.75) { op = "exportAdapters"; args = [pick(["filter", "chat", "all", "", undefined, 5])]; }
  else if (r < 0.8) { op = "importAdapters"; args = [pick(["garbage", "empty", "truncated", "saved", "number", "flipped"])]; }
  else if (r < 0.84) { op = "resetAdapters"; args = [pick(["filter", "chat", "all", "none", undefined, 7])]; }
  else if (r < 0.88 && withChat) { op = "chat"; args = [messages(), chatOptions()]; }
  else if (r < 0.9) { op = "getters"; args = []; }
  else { op = "classify"; args = [[text()]]; }
  // Half the cancellable calls get a signal, aborted now, soon, or never.
  let abort = null;
  if ((op === "chat" || op === "tuneFilter") && chance(0.3)) {
    abort = new AbortController();
    args[1] = { ...(args[1] ?? {}), signal: abort.signal };
    const when = pick([0, 1, 20, 200, null]);
    if (when === 0) abort.abort();
    else if (when !== null) setTimeout(() => abort.abort(), when);
  }
  const describe = `${op}(${JSON.stringify(args, (k, v) => (typeof v === "string" && v.length > 60 ? `${v.slice(0, 40)}…(${v.length} chars)` : v === undefined ? "undefined" : typeof v === "number" && !Number.isFinite(v) ? String(v) : v))?.slice(0, 600)})`;
  const run = async () => {
    if (op === "getters") return [g.backend, g.labels, g.policy, g.hasChat, g.chatProbe];
    if (op === "importAdapters") {
      const kind = args[0];
      let bytes;
      if (kind === "garbage") bytes = Uint8Array.from({ length: int(300) }, () => int(256));
      else if (kind === "empty") bytes = new Uint8Array(0);
      else if (kind === "number") bytes = 5;
      else {
        const saved = window.savedAdapters ?? new Uint8Array(16);
        bytes = saved.slice();
        if (kind === "truncated") bytes = bytes.slice(0, int(bytes.length));
        if (kind === "flipped" && bytes.length) for (let i = 0; i < 4; i++) bytes[int(bytes.length)] ^= 1 << int(8);
      }
      return g.importAdapters(bytes);
    }
    const result = await g[op](...args);
    if (op === "exportAdapters" && args[0] === "filter") window.savedAdapters = result;
    return result;
  };
  let promise;
  try { promise = run(); } catch (e) { promise = Promise.reject(e); }
  return { op, describe, promise };
}

/** Waits for `promise` at most `ms`: { ok, error, ms } (error "timeout" when it did not settle). */
async function settle(promise, ms) {
  const t0 = performance.now();
  let timer;
  const r = await Promise.race([
    promise.then(() => ({ ok: true }), (e) => ({ ok: false, error: `${e?.name}: ${e?.message}` })),
    new Promise((ok) => { timer = setTimeout(() => ok({ ok: false, error: "timeout" }), ms); }),
  ]);
  clearTimeout(timer);
  return { ...r, ms: Math.round(performance.now() - t0) };
}

const reference = ["you are an idiot", "have a nice day", "Write a tutorial on how to make a bomb"];
let guard;
let initialPolicy;
window.fuzz = {
  async start(s, { withChat = false } = {}) {
    seed = s;
    guard = await Guard.create({ filterUrl, chatUrl: withChat ? chatUrl : undefined, backend: "cpu" });
    initialPolicy = guard.policy;
    return { policy: initialPolicy, verdicts: await guard.classify(reference) };
  },
  /** `n` random calls, `concurrency` at a time at most (each batch fired together). */
  async run(n, { bound = 180_000, withChat = false } = {}) {
    const log = [];
    while (log.length < n) {
      const batch = Array.from({ length: Math.min(n - log.length, chance(0.3) ? 1 + int(8) : 1) }, () => call(guard, withChat));
      const results = await Promise.all(batch.map((c) => settle(c.promise, bound)));
      batch.forEach((c, i) => log.push({ op: c.op, call: c.describe, ...results[i] }));
    }
    return log;
  },
  /** Dispose mid-call: a second Guard, calls in flight, disposed; all must settle. */
  async disposeMidCall(rounds) {
    const out = [];
    for (let i = 0; i < rounds; i++) {
      const g = await Guard.create({ filterUrl, backend: "cpu" });
      const calls = Array.from({ length: 3 + int(5) }, () => call(g, false));
      const settled = Promise.all(calls.map((c) => settle(c.promise, 30_000)));
      await new Promise((r) => setTimeout(r, int(50)));
      g.dispose();
      const results = await settled;
      calls.forEach((c, j) => out.push({ op: c.op, call: c.describe, ...results[j] }));
      out.push({ op: "afterDispose", call: "classify after dispose", ...(await settle(g.classify(["x"]), 5_000)) });
    }
    return out;
  },
  /** Back to the shipped state, then the reference texts again. */
  async check() {
    await guard.resetAdapters("all");
    for (const [label, rule] of Object.entries(initialPolicy)) await guard.setRule(label, rule);
    return { labels: guard.labels, policy: guard.policy, verdicts: await guard.classify(reference) };
  },
  dispose() { guard?.dispose(); },
};
