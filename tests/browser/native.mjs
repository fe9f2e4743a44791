// The native build beside the browser's: the filter's verdicts from the native CLI
// (`webguard classify --json`, built by ./build.sh build), and the score comparison the
// parity tests (filter, filter-int8) share.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const webguard = join(process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/webguard/target"), "release/webguard");
export const models = process.env.WEBGUARD_MODELS ?? fileURLToPath(new URL("../../models", import.meta.url));

/** The native filter's verdicts on `texts` (CPU backend), with the models in `modelsDir`. */
export function nativeVerdicts(texts, modelsDir = models) {
  const out = execFileSync(webguard, ["--models", modelsDir, "classify", "--json", "--backend", "cpu"], {
    input: texts.join("\n") + "\n", encoding: "utf8", stdio: ["pipe", "pipe", "pipe"],
  });
  return out.trim().split("\n").map((l) => JSON.parse(l));
}

/** Asserts that `got` has `want`'s length and each of its scores is within `tolerance` of
 *  `want`'s; prints and returns the worst difference. */
export function assertScoresClose(got, want, label, tolerance) {
  assert.equal(got.length, want.length, label);
  let worst = 0;
  got.forEach((v, i) => {
    for (const l of Object.keys(want[i].scores)) {
      const diff = Math.abs(v.scores[l] - want[i].scores[l]);
      worst = Math.max(worst, diff);
      assert.ok(diff <= tolerance, `${label}: text ${i} ${l}: ${v.scores[l]} vs ${want[i].scores[l]}`);
    }
  });
  console.log(`# ${label}: worst abs score diff ${worst.toExponential(2)} (tolerance ${tolerance})`);
  return worst;
}
