#!/usr/bin/env python3
"""Training pairs for the chat model's safety adapters (assets/chat-safety-adapters.safetensors).

    python3 scripts/safety-adapter-pairs.py TRAIN.jsonl ANSWERS.jsonl... > pairs.jsonl

TRAIN.jsonl is `webguard safety-prompts --split train` (the training split only: validation and
held-out requests never reach the adapters). Harmful requests: up to --per-kind of each kind,
drawn with --seed, each answered with one of webguard's REFUSALS (src/tune/refusals.rs, in
turn). Benign pairs: every safe request in ANSWERS.jsonl (`webguard answers` over safe training
requests: the untuned model's own greedy answers, so the adapters learn when to refuse without
moving how it answers), cut at their last sentence end, refusals left out. Pairs longer than
1,000 characters are dropped (the tuning budget is 384 tokens a pair).
"""
import argparse
import json
import pathlib
import random
import re
import sys

def refusals():
    """`REFUSALS` as src/tune/refusals.rs defines them (read from there, not copied)."""
    src = (pathlib.Path(__file__).resolve().parent.parent / "src/tune/refusals.rs").read_text()
    body = re.search(r"pub const REFUSALS: \[&str; \d+\] = \[(.*?)\];", src, re.S).group(1)
    return [json.loads(m) for m in re.findall(r'"(?:[^"\\]|\\.)*"', body)]


REFUSALS = refusals()


def cut(answer):
    """The answer up to its last sentence end (answers were cut at a token budget)."""
    ends = list(re.finditer(r"[.!?](?=\s|$)", answer))
    if ends and ends[-1].end() >= 0.4 * len(answer):
        return answer[: ends[-1].end()].strip()
    return answer.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("answers", nargs="+")
    ap.add_argument("--per-kind", type=int, default=20)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    random.seed(a.seed)
    by_kind = {}
    train_prompts = set()
    for line in open(a.train):
        r = json.loads(line)
        train_prompts.add(r["prompt"])
        if r["label"] == "unsafe":
            by_kind.setdefault(r["type"], []).append(r)
    harmful = []
    for kind, rows in sorted(by_kind.items()):
        random.shuffle(rows)
        harmful += rows[: a.per_kind]
    answers = [json.loads(l) for f in a.answers for l in open(f)]
    # By text: ids are numbered per file version, the split is what matters.
    stray = [r["prompt"] for r in answers if r["prompt"] not in train_prompts]
    if stray:
        sys.exit(f"answers to requests outside the training split: {stray[:5]}")
    benign = [
        {"prompt": r["prompt"], "response": cut(r["answer"])}
        for r in answers
        if r["label"] == "safe" and not r["refusal"] and r["answer"].strip()
    ]
    pairs = [{"prompt": r["prompt"], "response": REFUSALS[i % len(REFUSALS)]} for i, r in enumerate(harmful)]
    pairs = [p for p in pairs + benign if len(p["prompt"]) + len(p["response"]) < 1000]
    random.shuffle(pairs)
    for p in pairs:
        print(json.dumps(p))
    print(f"{len(harmful)} harmful, {len(benign)} benign, {len(pairs)} pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
