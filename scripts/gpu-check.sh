#!/usr/bin/env bash
# On a machine with a GPU (or lavapipe): build, check the GPU engine's exactness, and print
# decode/prefill tokens/s of the engine and of burn's path natively on Vulkan, with the
# roofline bound (bytes read per decoded token / memory bandwidth) when the bandwidth is given,
# and the filter on the CPU, the GPU and `auto` (its measured route) at batches 1, 8 and 32.
#
#   scripts/gpu-check.sh [--bandwidth-gbs N] [--prompt-tokens N] [--new-tokens N]
#                        [--profile-tokens N] [--prebuilt DIR] [--engine-only]
#                        [--layouts auto|rows|split,...]
#
# Needs the chat model (scripts/fetch-models.sh; $WEBGUARD_MODELS or ./models) and a Vulkan
# driver. `--prebuilt DIR` takes `webguard` and `gpu_engine` (the test binary,
# `cargo test --release --test gpu_engine --no-run`) from DIR instead of building: for a GPU
# machine without a Rust toolchain (set CARGO_MANIFEST_DIR to this checkout there, for the
# committed references). Without MiniLM in the models folder the moderated-turn test, which
# needs the filter, is skipped (said so). The browser (Chromium on the GPU) is not driven from
# here yet: see notes/issue-14-gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."

bandwidth=""
prompt=128
new=128
profile=0
prebuilt=""
backends=cpu,gpu
only=()
layouts=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --bandwidth-gbs) bandwidth="$2"; shift 2 ;;
    --prompt-tokens) prompt="$2"; shift 2 ;;
    --new-tokens) new="$2"; shift 2 ;;
    --profile-tokens) profile="$2"; shift 2 ;;
    --prebuilt) prebuilt="$2"; shift 2 ;;
    --engine-only) backends=gpu; only=(--engine-only); shift ;;
    --layouts) layouts="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webguard/target}"
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" || true

if [ -n "$prebuilt" ]; then
  webguard="$prebuilt/webguard"
  tests=("$prebuilt/gpu_engine")
else
  echo "== build"
  cargo build --release --bin webguard
  webguard="$CARGO_TARGET_DIR/release/webguard"
  tests=(cargo test --release --test gpu_engine --)
fi
skip=()
models="${WEBGUARD_MODELS:-models}"
if [ ! -d "$models/all-MiniLM-L6-v2" ]; then
  echo "(no MiniLM in $models: the moderated-turn test, which needs the filter, is skipped)"
  skip=(--skip moderated_turn)
fi
echo "== exactness: GPU engine vs the CPU backend and the float64 reference (5 prompts)"
log="$(mktemp)"
# A failing check is reported and the benchmark still runs (a GPU machine's time is scarce).
"${tests[@]}" --nocapture "${skip[@]}" >"$log" 2>&1 || echo "FAILED: the exactness tests (see below)"
grep -E "adapter|worst|test result|panicked|FAILED|assert" "$log" || true

echo "== bench chat (engine and burn's path on the GPU, the CPU backend beside them)"
json="$("$webguard" bench chat --backends "$backends" "${only[@]}" --models "$models" \
  --gpu-layouts "$layouts" --prompt-tokens "$prompt" --new-tokens "$new" --json)"
echo "$json"
if [ "$profile" != 0 ]; then
  echo "== where a decoded token's time goes on the GPU ($profile tokens, one at a time)"
  "$webguard" bench chat --backends gpu --engine-only --models "$models" \
    --prompt-tokens "$prompt" --new-tokens 16 --profile-tokens "$profile"
fi

# The filter's `auto` (issue 14, item 3): which batch sizes it sends to the GPU, from its
# load-time timing, beside the CPU and the GPU alone. Needs MiniLM in the models folder.
if [ -d "$models/all-MiniLM-L6-v2" ]; then
  echo "== bench filter (CPU, GPU, and auto's measured route)"
  "$webguard" bench filter --backends cpu,gpu,auto --batches 1,8,32 --seconds 3 --models "$models" 2>&1 |
    grep -v XDG_RUNTIME_DIR || echo "FAILED: bench filter"
fi

# The roofline: a decoded token reads every weight once (the engine's weight bytes) plus the
# KV cache so far; at B GB/s that bounds decode at B / bytes tokens/s.
if [ -n "$bandwidth" ]; then
  echo "$json" | python3 -c '
import json, sys
gbs = float(sys.argv[1])
for line in sys.stdin:
    r = json.loads(line)
    if r["path"] != "engine":
        continue
    mb = r["weight_bytes"] / 1e6
    bound = gbs * 1e9 / r["weight_bytes"]
    got = r["decode_tokens_per_s"]
    print("engine (%s): decode %.1f tokens/s; roofline %.0f tokens/s (%.1f MB per token at %g GB/s): %.1f%% of it"
          % (r.get("decode_layout"), got, bound, mb, gbs, 100 * got / bound))
' "$bandwidth"
fi
