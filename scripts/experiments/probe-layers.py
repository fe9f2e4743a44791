# Experiment (twenty-seventh session, notes/issue-13-guard.md "other blocks' states"): which
# blocks' last-token states separate harmful from safe requests best, on the requests alone
# (train -> val; the held-out split is never read). Not part of the build. Inputs: the state
# cache of `WEBGUARD_EXACT=1 webguard train-probe --layers 0,1,...,29` (its requests alone come
# first; keyed by SHA-256 of the request text), `webguard safety-prompts --split train >
# $WORK/train.jsonl` and `--split val > $WORK/val.jsonl`; Python with numpy and scikit-learn.
# Usage: WORK=DIR [C=0.05] [MODEL=mlp] python probe-layers.py [LAYERS ...]  (no LAYERS: each
# block alone; MODEL=mlp: 4 networks of 64 units, the probe's shape, scores averaged)
import json, os, sys, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.metrics import roc_auc_score
from request_states import BLOCKS as L, key, read_states, safe_flagged
index, vals = read_states()
def load(split):
    rows = [json.loads(l) for l in open(os.path.join(os.environ.get("WORK", "."), f"{split}.jsonl"))]
    got = [(index.get(key(r["prompt"])), r) for r in rows]
    got = [(i, r) for i, r in got if i is not None]
    return np.array([i for i, _ in got]), [r for _, r in got]
ti, tr = load("train"); vi, vr = load("val")
print(f"rows {len(vals)}; train {len(ti)}, val {len(vi)} alone", flush=True)
ty = np.array([r["label"] == "unsafe" for r in tr]); vy = np.array([r["label"] == "unsafe" for r in vr])
vkind = [r["type"] for r in vr]
C0 = float(os.environ.get("C", "0.05"))
def evaluate(layers, C=C0):
    X = vals[ti][:, layers, :].reshape(len(ti), -1); V = vals[vi][:, layers, :].reshape(len(vi), -1)
    mu, sd = X.mean(0), X.std(0) + 1e-4
    X, V = (X - mu) / sd, (V - mu) / sd
    if os.environ.get("MODEL") == "mlp":
        fits = [MLPClassifier((64,), alpha=1.0, max_iter=60, random_state=k).fit(X, ty) for k in range(4)]
        s = np.mean([m.predict_proba(V)[:, 1] for m in fits], axis=0)
    else:
        s = LogisticRegression(C=C, max_iter=2000).fit(X, ty).predict_proba(V)[:, 1]
    out = [f"AUC {roc_auc_score(vy, s):.4f}"]
    for rec_ in (0.95, 0.97):
        out.append("@{}: FP {} (sensitive {})".format(rec_, *safe_flagged(s, vy, vkind, rec_)))
    return " ".join(out)
sets = {a: [int(x) for x in a.split(",")] for a in sys.argv[1:]} or {str(l): [l] for l in range(L)}
for name, ls in sets.items():
    print(f"{name:>28}: {evaluate(ls)}", flush=True)
