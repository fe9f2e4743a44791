// The Guard API (pkg/guard.js) for tests that drive it call by call: crashes and recovery,
// the GPU-to-CPU fallback, the model cache's integrity checks, the API fuzz. Helpers that
// every such test needs live here; the tests pass the calls themselves.
import { Guard } from "/pkg/guard.js";
import { chatUrl, filterUrl, spoilers } from "./common.mjs";

window.Guard = Guard;
window.models = { filterUrl, chatUrl };
/** "ok" with the value, or "Name: message", or "timeout" after `ms`: every call settles. */
window.settle = (promise, ms = 60_000) => Promise.race([
  Promise.resolve(promise).then((value) => ({ ok: true, value }), (e) => ({ ok: false, error: `${e?.name}: ${e?.message}` })),
  new Promise((r) => setTimeout(() => r({ ok: false, error: "timeout" }), ms)),
]);
window.spoilers = spoilers;
