#!/usr/bin/env bash
# Dependencies point one way (bytes -> weights/text -> models -> chat/filter -> generate ->
# guard -> tune -> wasm/CLI). This checks the rules a grep can see; build.sh test runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
forbid() { # forbid PATTERN WHY PATHS...
  local pattern="$1" why="$2"; shift 2
  local hits
  # Doc comments may name a layer above (a link for the reader); code may not.
  hits="$(grep -rnE "$pattern" "$@" 2>/dev/null | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)"
  if [ -n "$hits" ]; then
    echo "layering: $why" >&2
    echo "$hits" >&2
    fail=1
  fi
}
# The JS surface is the top layer: nothing in the library reaches up into it.
forbid 'crate::wasm\b|super::wasm\b' "only src/wasm may use crate::wasm" \
  $(find src -name '*.rs' -not -path 'src/wasm/*' -not -path 'src/wasm.rs' -not -path 'src/lib.rs')
# Moderation sits above generation, the models, the filter and tuning.
forbid 'crate::guard\b' "tune/, generate, models, filter, chat and below must not import the guard" \
  src/tune src/generate.rs src/chat.rs src/probe.rs src/models src/filter src/text src/weights src/backend.rs src/rng.rs
# Tuning sits above everything but the JS surface and the CLI.
forbid 'crate::tune\b' "only the guard, wasm and the CLI may use tune/" \
  src/generate.rs src/chat.rs src/probe.rs src/models src/filter src/text src/weights src/backend.rs src/rng.rs
# The lowest layers know nothing of models or text.
forbid 'crate::(models|filter|generate|chat|text)\b' "weights/ and backend must not import the layers above them" \
  src/weights src/backend.rs src/rng.rs
[ "$fail" = 0 ] && echo "layering: ok"
exit "$fail"
