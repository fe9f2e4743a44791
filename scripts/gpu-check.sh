#!/usr/bin/env bash
# On a machine with a GPU (or lavapipe): build, check the GPU engine's exactness, and print
# decode/prefill tokens/s of the engine and of burn's path natively on Vulkan, with the
# roofline bound (bytes read per decoded token / memory bandwidth) when the bandwidth is given.
#
#   scripts/gpu-check.sh [--bandwidth-gbs N] [--prompt-tokens N] [--new-tokens N]
#
# Needs the models (scripts/fetch-models.sh) and a Vulkan driver. The browser (Chromium on the
# GPU) is not driven from here yet: see notes/issue-14-gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."

bandwidth=""
prompt=128
new=128
while [ $# -gt 0 ]; do
  case "$1" in
    --bandwidth-gbs) bandwidth="$2"; shift 2 ;;
    --prompt-tokens) prompt="$2"; shift 2 ;;
    --new-tokens) new="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webguard/target}"
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" || true

echo "== build"
cargo build --release --bin webguard
echo "== exactness: GPU engine vs the CPU backend and the float64 reference (5 prompts)"
cargo test --release --test gpu_engine -- --nocapture 2>&1 | grep -E "adapter|worst|test result|panicked"

echo "== bench chat (engine and burn's path on the GPU, the CPU backend beside them)"
json="$("$CARGO_TARGET_DIR/release/webguard" bench chat --backends cpu,gpu \
  --prompt-tokens "$prompt" --new-tokens "$new" --json)"
echo "$json"

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
    print("engine: decode %.1f tokens/s; roofline %.0f tokens/s (%.1f MB per token at %g GB/s): %.1f%% of it"
          % (got, bound, mb, gbs, 100 * got / bound))
' "$bandwidth"
fi
