#!/usr/bin/env bash
# webguard's one entry point. Idempotent: every step checks before it installs or rebuilds.
#
#   ./build.sh setup   toolchain targets, wasm-bindgen-cli (pinned to Cargo.lock), Debian packages
#                      (chromium, mesa-vulkan-drivers), npm packages, Python reference tools, models
#   ./build.sh build   native release build + three wasm32 modules -> pkg/ (wasm-bindgen --target web,
#                      wasm-opt), then what each page downloads (scripts/sizes.mjs); each of
#                      webguard's crates is linted by clippy as it compiles (warnings are errors)
#   ./build.sh wasm-threads   only the threaded module (part of build; its own target folder)
#   ./build.sh serve   setup + build, then serve the demo on 127.0.0.1 with COOP/COEP headers
#   ./build.sh test    setup + build + every test: format, layering, native, references, browser
#   ./build.sh bench [ARGS]     browser benchmark: classify and chat on WebGPU and the CPU (wasm)
#                      next to wllama on the same GGUF, and a moderated chat turn next to the
#                      unmoderated answer (scripts/bench-browser.mjs ARGS, e.g. --guard-only)
#   ./build.sh fuzz [SECONDS] [TARGET...]   bounded cargo-fuzz runs (SECONDS each, default 60) of
#                      gguf_parse, safetensors_parse, filter_heads and chat_template (or TARGETs)
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/webguard/target, kept between runs so warm
# builds take seconds), PORT (serve, default 8080), WASM_OPT (wasm-opt level, default -O1:
# about as small as -O2/-O3 here at a third of the time; "none" skips it).
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"
CACHE="${WEBGUARD_CACHE:-$HOME/.cache/webguard}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export WEBGUARD_MODELS="${WEBGUARD_MODELS:-$ROOT/models}"
TOOLS="$CACHE/tools"
VENV="$CACHE/venv"
NODE_DIR="$ROOT/tests/browser"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"
# Mesa's Vulkan loader complains on every start without it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$CACHE/xdg-runtime}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# cargo for webguard's own crates, each linted by clippy (warnings are errors) just before rustc
# compiles it (scripts/rustc-with-clippy.sh): every build and test build here is also the lint
# run, in each configuration (native with the tests, the three wasm modules). Dependencies are
# never linted; the wrapper is part of cargo's fingerprint, so a plain `cargo build` of the same
# crate is a separate artifact and never counts as linted.
cargo_linted() { RUSTC_WORKSPACE_WRAPPER="$ROOT/scripts/rustc-with-clippy.sh" cargo "$@"; }
step() { printf '\n==> %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }
die() { echo "error: $*" >&2; exit 1; }

# The threaded wasm module (issue 15) needs a standard library built with atomics
# (-Z build-std): a nightly toolchain, pinned by date so every machine builds the same.
NIGHTLY="${WEBGUARD_NIGHTLY:-nightly-2026-05-20}"

wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

setup_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
  rustup target list --installed | grep -qx wasm32-unknown-unknown \
    || { step "rustup: adding wasm32-unknown-unknown"; rustup target add wasm32-unknown-unknown; }
  for c in clippy rustfmt; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
  done
  if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
     || [ "$(rustup component list --installed --toolchain "$NIGHTLY" | grep -cE '^(rust-src|clippy)')" != 2 ]; then
    step "rustup: $NIGHTLY with rust-src and clippy (the threaded wasm module's -Z build-std, its lints)"
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --component clippy
  fi
  local want; want="$(wasm_bindgen_version)"
  [ -n "$want" ] || die "wasm-bindgen not found in Cargo.lock"
  if [ "$("$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    step "cargo install wasm-bindgen-cli $want (pinned to Cargo.lock; takes a few minutes once)"
    # Not --locked: one of its locked dependencies is no longer in the registry.
    CARGO_TARGET_DIR="$CACHE/install-target" cargo install wasm-bindgen-cli --version "=$want" --root "$TOOLS" --force
  fi
}

setup_debian() {
  local missing=()
  for pkg in chromium mesa-vulkan-drivers; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

setup_node() {
  command -v npm >/dev/null || die "npm not found: install Node.js 20+"
  # playwright-core drives Debian's Chromium (never downloads a browser); binaryen gives
  # wasm-opt (Debian's binaryen 108 emits modules that fail at init).
  if [ ! -f "$NODE_DIR/node_modules/.package-lock.json" ] \
     || [ "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]; then
    step "npm ci (tests/browser)"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

setup_python() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import gguf, tokenizers, numpy, safetensors" 2>/dev/null; then
    step "python venv with the reference tools (gguf, tokenizers, numpy, safetensors)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-reference.txt
  fi
}

setup() {
  setup_rust
  setup_debian
  setup_node
  setup_python
  scripts/fetch-models.sh "$WEBGUARD_MODELS"
}

# wasm-opt LEVEL on FILE in place. npm's binaryen is itself wasm (single-threaded, minutes on
# these modules), so the result is cached by the input's hash: an unchanged module is not
# optimised twice. LEVEL "none" skips it.
# build() runs it in the background (optimize_wasm_bg) while the next module compiles: cargo
# leaves a core idle through burn's chain of crates, and a cold wasm-opt is minutes of one core
# (notes/cold-path-s4.md); wait_wasm_opt collects them before anything reads pkg/*.wasm.
WASM_OPT_PIDS=()
optimize_wasm_bg() { optimize_wasm "$@" & WASM_OPT_PIDS+=("$!"); }
wait_wasm_opt() {
  local pid
  for pid in "${WASM_OPT_PIDS[@]}"; do wait "$pid" || die "wasm-opt failed (exit $?)"; done
  WASM_OPT_PIDS=()
}
optimize_wasm() {
  local file="$1" opt="$2" extra="${3:-}"
  [ "$opt" != none ] || return 0
  # memory-packing would split the data into a segment per run of zeros: 6,188 segments
  # whose headers cost 15 KB of the page's gzipped code for 10 KB fewer raw bytes
  # (notes/issue-13-guard.md).
  local flags="--enable-bulk-memory --enable-nontrapping-float-to-int --enable-simd --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --skip-pass=memory-packing"
  local key; key="$(cat "$file" <(echo "$opt $flags $extra") | sha256sum | cut -c1-32)"
  local cached="$CACHE/wasm-opt/$key.wasm"
  if [ ! -f "$cached" ]; then
    step "wasm-opt $opt $file"
    mkdir -p "$CACHE/wasm-opt"
    # Two of these may run at once (optimize_wasm_bg): a file the other one deleted is no error.
    find "$CACHE/wasm-opt" -name '*.wasm' -mtime +7 -delete 2>/dev/null || true
    # shellcheck disable=SC2086 # $flags and $extra are lists of flags
    "$NODE_DIR/node_modules/.bin/wasm-opt" "$opt" $flags $extra "$file" -o "$cached.tmp"
    mv "$cached.tmp" "$cached"
  fi
  cp "$cached" "$file"
}

build() {
  local opt="${WASM_OPT:--O1}"
  # The threaded module shares no crate build with the others (atomics, its own std), so it
  # compiles beside them from the start: one cargo alone leaves a core idle through burn's and
  # wgpu's chains of crates (notes/cold-path-s4.md).
  compile_wasm_threads_bg
  step "cargo build --release (native)"
  cargo_linted build --release
  # Two wasm modules from one crate (issue 18): webguard.js without the `tune` feature
  # (autodiff and the optimiser: the smaller first download every page takes) and
  # webguard_tune.js with it (fetched when a page first tunes). The `wasm` profile builds cold
  # code for size (Cargo.toml). The two share every dependency build but burn's top crates.
  local wasm_out="$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm"
  local variant name features
  for variant in core tune; do
    if [ "$variant" = core ]; then name=webguard features="--no-default-features --features webgpu"; else name=webguard_tune features=; fi
    step "cargo build --profile wasm --target wasm32-unknown-unknown $features"
    cargo_linted build --profile wasm --lib --target wasm32-unknown-unknown $features
    step "wasm-bindgen --target web -> pkg/$name.js"
    wasm-bindgen --target web --out-dir pkg --out-name "$name" "$wasm_out/webguard.wasm"
    optimize_wasm_bg "pkg/${name}_bg.wasm" "$opt"
  done
  wait_compile_wasm_threads
  bindgen_wasm_threads "$opt"
  # The package ships the filter heads and the chat probe (guard.js loads them from next to
  # itself by default).
  cp assets/filter-heads.safetensors assets/chat-probe.safetensors assets/chat-safety-adapters.safetensors pkg/
  # The filter's encoder in 8 bits, guard.js's default (a quarter of MiniLM's f32 download):
  # byte-deterministic, its sha256 is pinned in pkg/guard-worker.js.
  "$CARGO_TARGET_DIR/release/webguard" --models "$WEBGUARD_MODELS" quantize-filter \
    --out pkg/all-MiniLM-L6-v2.int8.safetensors
  wait_wasm_opt
  step "what a page downloads (scripts/sizes.mjs; fails over the code budget)"
  node scripts/sizes.mjs --pkg pkg --models "$WEBGUARD_MODELS" --precompress
}

# The threaded module (issue 15, item 1): webguard_threads.js + webguard_threads_bg.wasm, the
# module without tuning and without WebGPU (cubecl-wgpu does not compile with atomics: see the
# `webgpu` feature in Cargo.toml) built with atomics and a shared, imported memory (4 GiB at most, as the
# single-threaded module can grow to), which guard-worker.js loads on cross-origin isolated
# pages and shares with its helper workers (guard-thread.js). Its own target folder: every crate
# differs (atomics, a rebuilt std), so it would only evict the other builds' artifacts.
WASM_THREADS_TARGET="$CARGO_TARGET_DIR/wasm-threads"
compile_wasm_threads() {
  step "cargo +$NIGHTLY build --profile wasm --target wasm32-unknown-unknown --no-default-features (threads, -Z build-std)"
  # RUSTFLAGS replaces .cargo/config.toml's flags for the target: they are repeated here.
  CARGO_TARGET_DIR="$WASM_THREADS_TARGET" RUSTFLAGS="--cfg getrandom_backend=\"wasm_js\" $WASM_THREADS_FLAGS" \
    cargo_linted "+$NIGHTLY" build --profile wasm --lib --target wasm32-unknown-unknown --no-default-features \
    -Z build-std=panic_abort,std
}
# In the background, its output to a log that is shown if it fails (interleaved with the other
# builds' it would be unreadable).
WASM_THREADS_PID=
WASM_THREADS_LOG="$CACHE/wasm-threads-build.log"
compile_wasm_threads_bg() {
  step "threaded module compiling in the background (log: $WASM_THREADS_LOG)"
  mkdir -p "$CACHE"
  compile_wasm_threads >"$WASM_THREADS_LOG" 2>&1 &
  WASM_THREADS_PID=$!
  # A failure of the other builds ends the script: the background cargo goes with it.
  trap 'stop_compile_wasm_threads' EXIT
}
stop_compile_wasm_threads() {
  [ -n "$WASM_THREADS_PID" ] || return 0
  pkill -TERM -P "$WASM_THREADS_PID" 2>/dev/null || true
  kill "$WASM_THREADS_PID" 2>/dev/null || true
}
wait_compile_wasm_threads() {
  [ -n "$WASM_THREADS_PID" ] || return 0
  step "waiting for the threaded module's compile"
  if ! wait "$WASM_THREADS_PID"; then
    tail -n 60 "$WASM_THREADS_LOG" >&2
    die "the threaded module did not compile (whole log: $WASM_THREADS_LOG)"
  fi
  WASM_THREADS_PID=
  grep -E "^(==>|\s+Finished)" "$WASM_THREADS_LOG" || true
}
bindgen_wasm_threads() {
  local opt="${1:-${WASM_OPT:--O1}}"
  step "wasm-bindgen --target web -> pkg/webguard_threads.js"
  wasm-bindgen --target web --out-dir pkg --out-name webguard_threads "$WASM_THREADS_TARGET/wasm32-unknown-unknown/wasm/webguard.wasm"
  optimize_wasm_bg pkg/webguard_threads_bg.wasm "$opt" --enable-threads
}

# The threaded module's target flags: SIMD128 as in .cargo/config.toml, atomics, and a shared
# memory imported from JS (so helper workers can instantiate the module on it) with the
# thread-local storage exports wasm-bindgen's thread start-up calls.
WASM_THREADS_FLAGS="-C target-feature=+atomics,+bulk-memory,+simd128 -C link-arg=--shared-memory \
-C link-arg=--max-memory=4294967296 -C link-arg=--import-memory -C link-arg=--export=__wasm_init_tls \
-C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"

run_tests() {
  step "cargo fmt --check; layering (scripts/check-layers.sh)"
  cargo fmt --all -- --check
  scripts/check-layers.sh
  step "references: scripts/make-references.py reproduces tests/reference/"
  local tmp; tmp="$(mktemp -d)"
  "$VENV/bin/python" scripts/make-references.py "$WEBGUARD_MODELS" --out "$tmp" >/dev/null
  for f in "$tmp"/*.json; do
    cmp -s "$f" "tests/reference/$(basename "$f")" \
      || die "tests/reference/$(basename "$f") differs from what scripts/make-references.py produces now"
  done
  rm -rf "$tmp"
  "$VENV/bin/python" scripts/judging_form.py reference | cmp -s - tests/reference/judging_forms.json \
    || die "tests/reference/judging_forms.json differs from what scripts/judging_form.py reference produces now"
  step "native tests (cargo test --release; the tests linted on the way)"
  cargo_linted test --release
  step "browser tests (headless Chromium, playwright-core)"
  # A test that hangs (a wasm panic leaves its promise unsettled) fails after 15 minutes
  # instead of holding CI to its limit.
  (cd "$NODE_DIR" && node --test --test-concurrency=1 --test-timeout=900000 ./*.test.mjs)
}

cmd="${1:-}"
case "$cmd" in
  setup) setup ;;
  build) setup; build ;;
  wasm-threads) setup_rust; setup_node; compile_wasm_threads; bindgen_wasm_threads; wait_wasm_opt ;;
  serve)
    setup; build
    step "serving"
    exec node scripts/serve.mjs --port "${PORT:-8080}" ;;
  test)
    start=$(date +%s)
    setup; build; run_tests
    echo "all tests passed in $(( $(date +%s) - start )) s" ;;
  bench)
    setup; build
    step "browser benchmark (headless Chromium)"
    shift; node scripts/bench-browser.mjs "$@" ;;
  fuzz)
    command -v cargo-fuzz >/dev/null || CARGO_TARGET_DIR="$CACHE/install-target" cargo install cargo-fuzz --root "$TOOLS"
    # Every target (or those named after SECONDS), each for SECONDS (default 60) from its
    # seeds (fuzz/seeds for GGUF, fuzz/seeds-TARGET for the others); libFuzzer's last lines say
    # how many inputs ran ("Done N runs in S second(s)"). A crash stops here with the input
    # saved under fuzz/artifacts/TARGET/. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP
    # lets the stable toolchain accept them.
    targets="${*:3}"
    for target in ${targets:-gguf_parse safetensors_parse filter_heads chat_template}; do
      step "fuzz $target (${2:-60} s)"
      seeds=seeds-$target; [ "$target" = gguf_parse ] && seeds=seeds
      mkdir -p "fuzz/corpus/$target"
      log="$CACHE/fuzz-$target.log" rc=0
      (cd fuzz && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$CACHE/fuzz-target" cargo fuzz run "$target" -- \
        -max_total_time="${2:-60}" -rss_limit_mb=2048 -print_final_stats=1 "corpus/$target" "$seeds") \
        >"$log" 2>&1 || rc=$?
      grep -E "^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|thread '|SUMMARY|Test unit written)" "$log" || true
      [ "$rc" = 0 ] || { tail -n 40 "$log"; die "fuzz $target failed (exit $rc): the whole log is $log"; }
    done ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2 ;;
esac
