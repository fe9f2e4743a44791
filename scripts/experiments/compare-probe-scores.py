#!/usr/bin/env python3
"""Compare request probes from their `train-probe --scores-out` files, at several thresholds.

    scripts/experiments/compare-probe-scores.py NAME=FILE [NAME=FILE ...] [--thresholds 0.45,0.48]

Each FILE holds one JSON line per validation example (`"set": "val"`, every form: alone, after
a turn, after a varied turn) and per `--dev-prompts` example (`"set"`: the file's path), with the
guard's score. Per probe and threshold it prints what a choice between probes reads: validation
false positives and harmful caught, every dev file's safe and harmful flagged (and the terse set
by kind), and ROC-AUC on validation and on the English dev files. The held-out split is never in
these files (train-probe leaves it out), so nothing here can read it.
"""

import json
import sys
from collections import defaultdict


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def auc(pos, neg):
    """Probability that a random unsafe example outscores a random safe one (ties count half)."""
    if not pos or not neg:
        return float("nan")
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + j + 1) / 2  # ranks are 1-based
        rank_sum += mean_rank * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def short(path):
    name = path.rsplit("/", 1)[-1]
    return name[: -len(".jsonl")] if name.endswith(".jsonl") else name


ENGLISH_DEV = ("safe-dev", "harmful-dev", "hate-safe-dev", "hate-harmful-dev")


def main(argv):
    thresholds = [0.42, 0.45, 0.48, 0.51, 0.54, 0.57, 0.60]
    probes = []
    args = iter(argv)
    for a in args:
        if a == "--thresholds":
            thresholds = [float(t) for t in next(args).split(",")]
        else:
            name, _, path = a.partition("=")
            probes.append((name, load(path)))
    if not probes:
        sys.exit(__doc__)
    for name, rows in probes:
        val = [r for r in rows if r["set"] == "val"]
        eng = [r for r in rows if short(r["set"]) in ENGLISH_DEV]
        print(f"## {name}")
        print(
            f"ROC-AUC: val {auc([r['score'] for r in val if r['label'] == 'unsafe'], [r['score'] for r in val if r['label'] == 'safe']):.4f}, "
            f"English dev {auc([r['score'] for r in eng if r['label'] == 'unsafe'], [r['score'] for r in eng if r['label'] == 'safe']):.4f}"
        )
        sets = sorted({r["set"] for r in rows if r["set"] != "val"}, key=short)
        header = ["threshold", "val FP", "val harmful", "Eng dev harmful", "Eng dev safe"]
        header += [f"{short(s)} unsafe/safe" for s in sets]
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for t in thresholds:
            def count(rs, label):
                hits = sum(1 for r in rs if r["label"] == label and r["score"] >= t)
                return f"{hits}/{sum(1 for r in rs if r['label'] == label)}"

            cells = [f"{t:.2f}", count(val, "safe"), count(val, "unsafe")]
            cells += [count(eng, "unsafe"), count(eng, "safe")]
            for s in sets:
                rs = [r for r in rows if r["set"] == s]
                cells.append(f"{count(rs, 'unsafe')} / {count(rs, 'safe')}")
            print("| " + " | ".join(cells) + " |")
        # Kinds of the validation split and of the terse dev set, at each threshold.
        kinds = defaultdict(list)
        for r in rows:
            if r["set"] == "val" or "terse" in short(r["set"]):
                where = "val" if r["set"] == "val" else short(r["set"])
                kinds[(where, r["kind"], r["label"])].append(r["score"])
        print("\nflagged per kind (" + ", ".join(f"{t:.2f}" for t in thresholds) + ")")
        for (where, kind, label), scores in sorted(kinds.items()):
            flagged = " ".join(str(sum(1 for s in scores if s >= t)) for t in thresholds)
            print(f"  {where:10} {kind:28} {label:6} of {len(scores):4}: {flagged}")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
