// Exposes the wasm Chat to the test driver (chat.test.mjs): greedy generation on a backend,
// bad input.
import init, { Chat } from "/pkg/webguard.js";
import { GGUF, bytes, outcomes } from "./common.mjs";

const chats = {};
let gguf;
async function chatOn(backend) {
  if (!chats[backend]) {
    gguf ??= await bytes(GGUF);
    chats[backend] = await Chat.create(backend, gguf);
  }
  return chats[backend];
}

await init();
window.webguard = {
  async generate(backend, prompt, maxTokens, options = {}) {
    const c = await chatOn(backend);
    const pieces = [];
    const r = await c.generate([{ role: "user", content: prompt }], { maxTokens, ...options }, (p) => { pieces.push(p); });
    return { backend: c.backend, description: c.backendDescription, text: r.text, tokens: Array.from(r.tokens), stopReason: r.stopReason, pieces };
  },
  /** The logits after `ids` at the positions `at` (the reference's ids), and their
   * log-sum-exp over the whole vocabulary. */
  async nextLogits(backend, ids, at) {
    const c = await chatOn(backend);
    const logits = await c.nextTokenLogits(Uint32Array.from(ids));
    const max = logits.reduce((m, v) => Math.max(m, v), -Infinity);
    const lse = max + Math.log(logits.reduce((s, v) => s + Math.exp(v - max), 0));
    return { backend: c.backend, length: logits.length, at: at.map((i) => logits[i]), logsumexp: lse };
  },
  async cancelAfterFirst(backend) {
    const c = await chatOn(backend);
    let n = 0;
    const r = await c.generate([{ role: "user", content: "Count from one to twenty." }], { maxTokens: 20 }, () => { n += 1; return false; });
    return { n, stopReason: r.stopReason };
  },
  async badInput(backend) {
    const c = await chatOn(backend);
    return outcomes({
      noMessages: () => c.generate([], {}),
      unknownRole: () => c.generate([{ role: "wizard", content: "hi" }], {}),
      notMessages: () => c.generate("hello", {}),
      badTemperature: () => c.generate([{ role: "user", content: "hi" }], { temperature: -1 }),
      badTopP: () => c.generate([{ role: "user", content: "hi" }], { topP: 2 }),
      unknownOption: () => c.generate([{ role: "user", content: "hi" }], { temprature: 1 }),
      garbageGguf: () => Chat.create("cpu", new Uint8Array([71, 71, 85, 70, 3, 0, 0, 0])),
      idsOutsideVocabulary: () => c.nextTokenLogits(Uint32Array.from([1, 999999])),
      noIds: () => c.nextTokenLogits(new Uint32Array()),
      idsAsString: () => c.nextTokenLogits("1, 2, 3"),
      fractionalId: () => c.nextTokenLogits([1, 2.5]),
      negativeId: () => c.nextTokenLogits([1, -3]),
      plainArrayIds: async () => {
        const n = (await c.nextTokenLogits([1, 2, 3])).length;
        if (n !== 49152) throw new Error(`${n} logits`);
      },
    });
  },
};
