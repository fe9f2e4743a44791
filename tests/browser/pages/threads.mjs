// The threaded module (issue 15): a Guard on the CPU with `threads` threads, its greedy answers,
// chat probe score and filter scores, for threads.test.mjs to compare across thread counts.
import { Guard } from "/pkg/guard.js";
import { chatUrl, filterUrl } from "./common.mjs";

const PROMPTS = [
  "What is the capital of France?",
  "Write a short story about a robot who learns to paint.",
];
const TEXTS = ["have a nice day", "you are a complete idiot", "I will find you and hurt you", "the movie's ending: the butler did it"];

window.webguard = {
  isolated: () => self.crossOriginIsolated,
  /** `Guard.create({ threads })` on the CPU: what it reports and what it answers. */
  async run(threads, maxTokens = 40) {
    const g = await Guard.create({ filterUrl, chatUrl, backend: "cpu", cache: false, threads });
    try {
      const replies = [];
      for (const content of PROMPTS) {
        const r = await g.chat([{ role: "user", content }], { maxTokens });
        replies.push({ text: r.text, tokens: r.tokens, promptTokens: r.promptTokens, stopReason: r.stopReason, chatJudge: r.chatJudge, blocked: r.blocked });
      }
      const verdicts = await g.classify(TEXTS);
      return { backend: g.backend, replies, scores: verdicts.map((v) => v.scores) };
    } finally {
      g.dispose();
    }
  },
  /** A Guard without a chat model (threads would have nothing to run). */
  async filterOnly(threads) {
    const g = await Guard.create({ filterUrl, backend: "cpu", cache: false, threads });
    try {
      return { backend: g.backend, verdict: (await g.classify(["have a nice day"]))[0].flagged };
    } finally {
      g.dispose();
    }
  },
  /** What `threads` values Guard.create refuses, and how. */
  async badThreads() {
    const out = {};
    for (const threads of [0, 17, 2.5, "2", null]) {
      try {
        (await Guard.create({ filterUrl, backend: "cpu", cache: false, threads })).dispose();
        out[String(threads)] = "no error";
      } catch (e) {
        out[String(threads)] = `${e.name}: ${e.message}`;
      }
    }
    return out;
  },
};
