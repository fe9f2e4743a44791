#!/usr/bin/env python3
"""alt-profanity-check (PyPI; TF-IDF + linear SVM trained on its own data) on the TweetEval val
splits the filter is reported on, so the README can put the two side by side.

    python3 -m venv ~/.cache/webguard/venv-peers
    ~/.cache/webguard/venv-peers/bin/pip install -r scripts/requirements-peers.txt
    ~/.cache/webguard/venv-peers/bin/python scripts/peer-profanity-check.py [DATA_DIR] [--json]

Prints, per task, macro-F1 at the library's own decision (probability >= 0.5), macro-F1 at the
threshold that is best on the same val data (what webguard's thresholds get, so the comparison
is not about calibration) and ROC-AUC (threshold-free).
"""
import argparse
import json
import pathlib

import numpy as np
from profanity_check import predict_prob
from sklearn.metrics import f1_score, roc_auc_score

ROOT = pathlib.Path(__file__).resolve().parent.parent

p = argparse.ArgumentParser()
p.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
p.add_argument("--json", action="store_true")
a = p.parse_args()

out = {}
for task in ["offensive", "hate"]:
    d = pathlib.Path(a.data) / "tweeteval" / task
    texts = d.joinpath("val_text.txt").read_text(encoding="utf-8").splitlines()
    labels = np.array([int(x) for x in d.joinpath("val_labels.txt").read_text().split()])
    assert len(texts) == len(labels), task
    probs = predict_prob([t.strip() for t in texts])
    default = f1_score(labels, probs >= 0.5, average="macro")
    best = max(f1_score(labels, probs >= t, average="macro") for t in np.unique(probs))
    out[task] = {
        "n": len(texts),
        "macro_f1_default": round(float(default), 4),
        "macro_f1_best_threshold": round(float(best), 4),
        "roc_auc": round(float(roc_auc_score(labels, probs)), 4),
    }

if a.json:
    print(json.dumps(out))
else:
    print("alt-profanity-check 1.9.1 on TweetEval val:")
    for task, r in out.items():
        print(f"  {task:<10} n={r['n']:<5} macro-F1 {r['macro_f1_default']:.4f} (p>=0.5), "
              f"{r['macro_f1_best_threshold']:.4f} (best threshold on val), ROC-AUC {r['roc_auc']:.4f}")
