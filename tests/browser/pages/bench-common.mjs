// Shared by the browser benchmark's page (bench.mjs) and its worker (bench-worker.mjs).

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Median milliseconds of `runs` calls of `filter.classify` on `batch` copies of one short
 *  offensive message, after a warm-up call. */
export async function classifyMs(filter, batch, runs) {
  const texts = Array.from({ length: batch }, (_, i) => `message ${i}: you are such an idiot, nobody wants you here, go away and never come back`);
  await filter.classify(texts);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await filter.classify(texts);
    times.push(performance.now() - t0);
  }
  return median(times);
}
