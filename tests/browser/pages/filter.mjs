// Exposes the wasm Filter to the test driver (filter.test.mjs): create on a backend, classify,
// bad input.
import init, { Filter } from "/pkg/webguard.js";
import { bytes, minilm, outcomes } from "./common.mjs";

const heads = () => bytes("/assets/filter-heads.safetensors");
const filters = {};
async function filterOn(backend) {
  filters[backend] ??= await Filter.create(backend, ...(await minilm()), await heads());
  return filters[backend];
}

await init();
window.webguard = {
  async classify(backend, texts) {
    const f = await filterOn(backend);
    return { backend: f.backend, description: f.backendDescription, route: f.route, labels: f.labels, verdicts: await f.classify(texts) };
  },
  async setThreshold(backend, label, value) {
    const f = await filterOn(backend);
    f.setThreshold(label, value);
    return Array.from(f.thresholds);
  },
  /** Each bad call's outcome: "Error: message" or "ok: <summary>". */
  async badInput(backend) {
    const f = await filterOn(backend);
    const summary = (r) => `ok: ${Array.isArray(r) ? `${r.length} verdicts, ${new Set(r.map((v) => JSON.stringify(v))).size} distinct` : typeof r}`;
    return outcomes({
      notArray: () => f.classify("just a string"),
      notStrings: () => f.classify(["fine", 42]),
      loneSurrogate: () => f.classify(["broken \ud800 text"]),
      oneMegabyte: () => f.classify(["a ".repeat(512 * 1024)]),
      empty: () => f.classify([""]),
      none: () => f.classify([]),
      thousands: () => f.classify(Array.from({ length: 1000 }, (_, i) => `message number ${i % 10}`)),
      badThreshold: () => f.setThreshold("offensive", 1.5),
      unknownLabel: () => f.setThreshold("spam", 0.5),
      badBackend: () => Filter.create("tpu", new Uint8Array(), new Uint8Array(), new Uint8Array(), new Uint8Array()),
      garbageHeads: async () => Filter.create("cpu", ...(await minilm()), new TextEncoder().encode("not a heads file")),
    }, summary);
  },
};
