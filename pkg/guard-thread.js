// A helper thread of webguard's threaded module (webguard_threads.js), started by
// guard-worker.js, which posts the compiled module and its shared memory. It instantiates the
// same module on that memory, says so, then runs the thread pool's helper loop for ever
// (runThreadHelper blocks this worker: it spins, then sleeps in Atomics.wait between jobs).
self.onmessage = async ({ data }) => {
  let mod;
  try {
    mod = await import("./webguard_threads.js");
    mod.initSync({ module: data.module, memory: data.memory });
  } catch (e) {
    self.postMessage({ ok: false, message: `${e?.name ?? "Error"}: ${e?.message ?? e}` });
    return;
  }
  self.postMessage({ ok: true });
  mod.runThreadHelper();
};
