#!/usr/bin/env bash
# build.sh's RUSTC_WORKSPACE_WRAPPER: cargo runs it as `WRAPPER RUSTC ARGS...` for webguard's own
# crates (lib, CLI, tests; natively and for wasm32), never for dependencies. It lints the crate
# with clippy first (a check: `--emit=metadata` into a scratch folder, warnings are errors), then
# compiles it with rustc, arguments untouched.
#
# Why not `cargo clippy`: it re-checks every dependency (burn, wgpu, tokenizers, ...) in a
# check-mode build of its own, once per configuration, although the builds have just compiled
# them: 7.0 min of a cold `./build.sh test` on the 2-core machine (native 2.6, wasm32 2.1, the
# threaded module 2.3; notes/cold-path-s4.md). Here the lints read the dependencies' rlibs.
# Why not clippy-driver as the compiler: it compiles with `-Zmir-opt-level=0` (its MIR lints need
# unoptimised MIR), so the shipped modules would no longer be what rustc makes.
set -euo pipefail
rustc="$1"
shift

# Not a crate compile (cargo's target-info queries, `--print ...`): rustc as asked.
case " $* " in
  *" --print"*) exec "$rustc" "$@" ;;
  *" --crate-name "*) ;;
  *) exec "$rustc" "$@" ;;
esac

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
lint=()
next_is_out_dir=
for arg in "$@"; do
  if [ -n "$next_is_out_dir" ]; then
    lint+=("$scratch")
    next_is_out_dir=
    continue
  fi
  case "$arg" in
    --emit=*) lint+=(--emit=metadata) ;;
    --out-dir) lint+=("$arg"); next_is_out_dir=1 ;;
    --out-dir=*) lint+=("--out-dir=$scratch") ;;
    # cargo pipelines on rustc's artifact notices: the scratch metadata must not announce itself.
    --json=*)
      kinds="$(tr ',' '\n' <<<"${arg#--json=}" | grep -vx artifacts | paste -sd, -)"
      [ -z "$kinds" ] || lint+=("--json=$kinds") ;;
    *) lint+=("$arg") ;;
  esac
done

# The clippy of the toolchain cargo runs (rustup's proxy follows RUSTUP_TOOLCHAIN: `cargo +nightly`
# lints with the nightly's clippy).
driver="$(dirname "$rustc")/clippy-driver"
[ -x "$driver" ] || driver=clippy-driver
"$driver" "${lint[@]}" -D warnings
exec "$rustc" "$@"
