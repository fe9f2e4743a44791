"""Words of src/text/language.rs's other-language lists that English uses too: wordfreq's
English Zipf frequency (log10 of uses per billion words) at least ZIPF (default 3.5).
Prints them as one space-separated line, for `SHARED_WITH_ENGLISH`.

wordfreq is not a dependency of webguard: `python3 -m venv /tmp/wf && /tmp/wf/bin/pip install
wordfreq==3.1.1`, then `/tmp/wf/bin/python scripts/experiments/english-homographs.py`."""
import pathlib
import re
import sys

import wordfreq

ZIPF = float(sys.argv[1]) if len(sys.argv) > 1 else 3.5
src = (pathlib.Path(__file__).resolve().parents[2] / "src/text/language.rs").read_text()
start = src.index("const OTHERS")
table = src[start:src.index("];", start)]
entries = re.findall(r'\(\s*"([a-z]+)",\s*"([^"]+)",\s*"((?:[^"\\]|\\\n)*)",\s*"([^"]*)",?\s*\)', table, re.S)
assert len(entries) >= 29, len(entries)
shared = {}
for code, _, words, _ in entries:
    for w in words.replace("\\\n", " ").split():
        z = wordfreq.zipf_frequency(w, "en")
        if z >= ZIPF:
            shared[w] = z
print(" ".join(sorted(shared)))
print(f"{len(shared)} words at English Zipf >= {ZIPF}", file=sys.stderr)
