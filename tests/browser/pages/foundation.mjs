// Exposes the wasm module's small foundation surface to the test driver (foundation.test.mjs).
import init, { version, probeBackend, Tokenizer } from "/pkg/webguard.js";
import { GGUF, MINILM, bytes, outcomes } from "./common.mjs";

await init();
window.webguard = {
  version,
  probeBackend,
  async adapterInfo() {
    if (!navigator.gpu) return null;
    const a = await navigator.gpu.requestAdapter();
    if (!a) return null;
    const info = a.info ?? {};
    return { vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description };
  },
  async tokenizeAll(which, texts) {
    const tok = which === "smollm2"
      ? Tokenizer.fromGguf(await bytes(GGUF))
      : Tokenizer.fromTokenizerJson(await bytes(`${MINILM}/tokenizer.json`));
    try {
      return texts.map((t) => {
        const ids = Array.from(tok.encode(t));
        return { ids, decoded: tok.decode(Uint32Array.from(ids)) };
      });
    } finally {
      tok.free();
    }
  },
  /** "name: Error: message" for each bad call, in order. */
  async tryBadInput() {
    const out = await outcomes({
      "gguf garbage": () => Tokenizer.fromGguf(new Uint8Array([1, 2, 3, 4, 5])),
      "json garbage": () => Tokenizer.fromTokenizerJson(new TextEncoder().encode("{nope")),
      "backend name": () => probeBackend("tpu"),
    });
    return Object.entries(out).map(([name, outcome]) => `${name}: ${outcome}`);
  },
};
