#!/usr/bin/env python3
"""The peer side of `webguard bench embed`: sentence-transformers (PyTorch, CPU) embedding the
same texts, at the same batch sizes and thread count, printing one JSON object.

    ~/.cache/webguard/venv-st/bin/python scripts/bench-embeddings.py TEXTS.json --threads N --batches 1,32
(install: see make-embedding-reference.py). TEXTS.json is a JSON list of strings.
"""
import argparse
import json
import os
import pathlib
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from peakmem import peak_rss_mb  # noqa: E402  (scripts/peakmem.py)

ROOT = pathlib.Path(__file__).resolve().parent.parent

p = argparse.ArgumentParser()
p.add_argument("texts")
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--batches", default="1,32")
p.add_argument("--models", default=str(ROOT / "models"))
p.add_argument("--seconds", type=float, default=5.0)
a = p.parse_args()
torch.set_num_threads(a.threads)
texts = json.loads(pathlib.Path(a.texts).read_text())
model = SentenceTransformer(str(pathlib.Path(a.models) / "all-MiniLM-L6-v2"), device="cpu")
out = {"torch": torch.__version__, "threads": a.threads, "results": []}
for batch in [int(b) for b in a.batches.split(",")]:
    chunk = texts[:batch]
    model.encode(chunk, batch_size=batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < a.seconds:
        model.encode(chunk, batch_size=batch)
        done += len(chunk)
    elapsed = time.perf_counter() - start
    out["results"].append({"batch": batch, "texts_per_s": done / elapsed})
out["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(out))
