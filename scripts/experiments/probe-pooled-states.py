# Experiment (twenty-first session, notes/issue-13-guard.md "the probe on states pooled over the
# user's message"): SmolLM2's states at the last prompt token vs averaged over the user message,
# the same heads fitted on each. Not part of the build. Inputs: `webguard safety-prompts
# --split train > $WORK/train.jsonl` and `--split val > $WORK/val.jsonl`; the model folder
# ($WEBGUARD_MODELS, default ./models); Python with torch, transformers (reads the GGUF),
# gguf, accelerate, scikit-learn. Never point it at a *-held.jsonl file.
"""Like-for-like: LAST-token vs mean-pooled (user content) vs BOTH SmolLM2 states as guard probe features.
Usage: WORK=DIR python probe-pooled-states.py extract [NAME ...] | rate | fit | report | seeds
"""
import os, sys, json, time
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np

HERE = os.environ.get("WORK", "/tmp/webguard-pooled")
FE = HERE + "/feats"
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.environ.get("WEBGUARD_MODELS", os.path.join(REPO, "models"))
GE = os.path.join(REPO, "tests/data/guard-eval") + "/"
SETS = {
    "train": HERE + "/train.jsonl",
    "val": HERE + "/val.jsonl",
    "safe-dev": GE + "safe-dev.jsonl",
    "harmful-dev": GE + "harmful-dev.jsonl",
    "hate-safe-dev": GE + "hate-safe-dev.jsonl",
    "hate-harmful-dev": GE + "hate-harmful-dev.jsonl",
    "other-languages-dev": GE + "other-languages-dev.jsonl",
}
LAYERS = [6, 10, 14, 18, 22, 26]          # block indices; hidden_states[i+1]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

def rows(name):
    p = SETS[name]
    assert not p.endswith("-held.jsonl")
    return [json.loads(l) for l in open(p)]

def load_model():
    import torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw = dict(gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(MODELS, **kw)
    m = AutoModelForCausalLM.from_pretrained(MODELS, dtype=torch.float32, **kw).eval()
    return tok, m

def encode(tok, prompt):
    """ids of the product's prompt, and the [a,b) token span of the user content."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    s = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    pre = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert s == pre + prompt + "<|im_end|>\n<|im_start|>assistant\n", repr(s)
    enc = tok(s, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    c0, c1 = len(pre), len(pre) + len(prompt)
    content = [i for i, (a, b) in enumerate(offs) if a >= c0 and b <= c1 and b > a]
    a, b = content[0], content[-1] + 1
    assert content == list(range(a, b))
    # tokens straddling the boundaries would be a problem: check nothing overlaps both sides
    for i, (x, y) in enumerate(offs):
        assert not (x < c0 < y) and not (x < c1 < y), (prompt, i)
    # segment-wise tokenisation must give the same ids (text between special tokens as plain text)
    seg = tok(pre, add_special_tokens=False)["input_ids"] + tok(prompt, add_special_tokens=False)["input_ids"] \
        + tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    return ids, a, b, seg == ids

def extract(names, limit=None, bs=8):
    import torch
    tok, m = load_model()
    tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for name in names:
        R = rows(name)[:limit] if limit else rows(name)
        enc = [encode(tok, r["prompt"]) for r in R]
        assert all(e[0][-len(tail):] == tail for e in enc)
        mismatch = sum(not e[3] for e in enc)
        order = sorted(range(len(R)), key=lambda i: len(enc[i][0]))
        last = np.zeros((len(R), 576 * len(LAYERS)), np.float32)
        pool = np.zeros_like(last)
        t = time.time(); ntok = 0
        for k in range(0, len(order), bs):
            idx = order[k:k + bs]
            L = max(len(enc[i][0]) for i in idx)
            x = torch.full((len(idx), L), 2, dtype=torch.long)
            am = torch.zeros((len(idx), L), dtype=torch.long)
            for j, i in enumerate(idx):
                n = len(enc[i][0]); x[j, :n] = torch.tensor(enc[i][0]); am[j, :n] = 1
                ntok += n
            with torch.no_grad():
                hs = m.model(input_ids=x, attention_mask=am, output_hidden_states=True).hidden_states
            H = torch.cat([hs[l + 1] for l in LAYERS], dim=-1)  # (B, L, 3456)
            for j, i in enumerate(idx):
                ids, a, b, _ = enc[i]
                last[i] = H[j, len(ids) - 1].numpy()
                pool[i] = H[j, a:b].mean(0).numpy()
        dt = time.time() - t
        print(f"{name}: {len(R)} prompts, {ntok} tokens, {dt:.1f}s = {len(R)/dt:.2f} prompts/s, "
              f"{ntok/dt:.0f} tok/s; segment-tokenisation mismatches {mismatch}", flush=True)
        if limit is None:
            np.save(f"{FE}/{name}.last.npy", last); np.save(f"{FE}/{name}.pool.npy", pool)
        else:
            return last, pool, enc, order

def rate():
    # batching check: bs=1 vs bs=8 give the same features (up to fp noise) and the speed of each
    import torch
    for bs in (1, 8):
        t = time.time(); l, p, enc, _ = extract(["train"], limit=120, bs=bs); print("bs", bs, time.time() - t)
        if bs == 1: l1, p1 = l, p
    print("max |diff| last", np.abs(l - l1).max(), "pool", np.abs(p - p1).max(), "scale", np.abs(l1).max())

# ---------------------------------------------------------------- fitting
FEATS = ["last", "pool", "both"]
EN_SAFE, EN_HARM = ["safe-dev", "hate-safe-dev"], ["harmful-dev", "hate-harmful-dev"]

def feats(name, f):
    if f == "both":
        return np.concatenate([feats(name, "last"), feats(name, "pool")], axis=1)
    return np.load(f"{FE}/{name}.{f}.npy")

def labels(name):
    return np.array([r["label"] == "unsafe" for r in rows(name)], int)

def thr_at(scores, y, fpr):
    s = np.sort(scores[y == 0])[::-1]
    k = int(np.floor(fpr * len(s)))          # at most k safe may be flagged
    return np.nextafter(s[k], np.inf)        # lowest threshold with scores >= t flagging <= k

def flags(scores, y, t):
    f = scores >= t
    return int(f[y == 1].sum()), int((y == 1).sum()), int(f[y == 0].sum()), int((y == 0).sum())

def main():
    import torch; torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    from sklearn.preprocessing import StandardScaler
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.metrics import roc_auc_score as auc
    ytr, yva = labels("train"), labels("val")
    dev = {"en": (EN_SAFE + EN_HARM), "ol": ["other-languages-dev"]}
    ydev = {k: np.concatenate([labels(n) for n in v]) for k, v in dev.items()}
    types_en = [r.get("type") for n in dev["en"] for r in rows(n)]
    out = {}
    only = sys.argv[2:] or [f"{f}.{m}" for f in FEATS for m in ("lr", "mlp")]
    for key in only:
        f, model = key.split(".")
        sc = StandardScaler().fit(feats("train", f))
        Xtr, Xva = sc.transform(feats("train", f)), sc.transform(feats("val", f))
        Xdev = {k: sc.transform(np.concatenate([feats(n, f) for n in v])) for k, v in dev.items()}
        grid = [1e-4, 1e-3, 1e-2, 1e-1] if model == "lr" else [1e-2, 1e-1, 1.0, 10.0]
        best = None
        for g in grid:
            t0 = time.time()
            if model == "lr":
                clf = LogisticRegression(C=g, class_weight="balanced", max_iter=3000)
            else:
                clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", alpha=g,
                                    early_stopping=False, random_state=0, max_iter=200)
            clf.fit(Xtr, ytr)
            sva = clf.predict_proba(Xva)[:, 1]
            t2 = thr_at(sva, yva, 0.02)
            rec2 = flags(sva, yva, t2)[0]
            a = auc(yva, sva)
            print(f"  {key} {g:g}: val auc {a:.4f} harmful@2% {rec2} ({time.time()-t0:.0f}s"
                  + (f", {clf.n_iter_} it)" if model == "mlp" else ")"), flush=True)
            if best is None or (rec2, a) > best[0]:
                best = ((rec2, a), g, clf, sva)
        (_, a), g, clf, sva = best
        res = {"param": g, "val_auc": a, "val_scores": sva.tolist()}
        for fp in (0.02, 0.05):
            t = thr_at(sva, yva, fp)
            res[f"t{fp}"] = float(t)
            res[f"val@{fp}"] = flags(sva, yva, t)
        for k in dev:
            s = clf.predict_proba(Xdev[k])[:, 1]
            res[f"{k}_scores"] = s.tolist()
            res[f"{k}_auc"] = auc(ydev[k], s)
            for fp in (0.02, 0.05):
                res[f"{k}@{fp}"] = flags(s, ydev[k], res[f"t{fp}"])
        print(key, {k: v for k, v in res.items() if "scores" not in k}, flush=True)
        json.dump(res, open(f"{HERE}/res.{key}.json", "w"))

def report():
    from sklearn.metrics import roc_auc_score as auc
    R = {}
    for f in FEATS:
        for m in ("lr", "mlp"):
            p = f"{HERE}/res.{f}.{m}.json"
            if os.path.exists(p): R[f"{f}.{m}"] = json.load(open(p))
    fmt = lambda t: f"{t[0]}/{t[1]}, {t[2]}/{t[3]}"
    print("| feature.fit | param | val AUC | val @2% harm/safe | val @5% | EN dev AUC | EN @2% harm/safe | EN @5% | OL AUC | OL @2% harm/safe | OL @5% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, r in R.items():
        print(f"| {k} | {r['param']:g} | {r['val_auc']:.4f} | {fmt(r['val@0.02'])} | {fmt(r['val@0.05'])} | "
              f"{r['en_auc']:.4f} | {fmt(r['en@0.02'])} | {fmt(r['en@0.05'])} | {r['ol_auc']:.4f} | "
              f"{fmt(r['ol@0.02'])} | {fmt(r['ol@0.05'])} |")
    yen = np.concatenate([labels(n) for n in EN_SAFE + EN_HARM]); yol = labels("other-languages-dev")
    ten = [r.get("type") for n in EN_SAFE + EN_HARM for r in rows(n)]
    tol = [r.get("type") for r in rows("other-languages-dev")]
    rng = np.random.default_rng(0)
    for m in ("lr", "mlp"):
        if f"last.{m}" not in R: continue
        base = R[f"last.{m}"]
        for f in ("pool", "both"):
            if f"{f}.{m}" not in R: continue
            r = R[f"{f}.{m}"]
            for ds, y, T in (("en", yen, ten), ("ol", yol, tol)):
                sa, sb = np.array(base[f"{ds}_scores"]), np.array(r[f"{ds}_scores"])
                for fp in (0.02, 0.05):
                    fa, fb = sa >= base[f"t{fp}"], sb >= r[f"t{fp}"]
                    for lab, nm in ((1, "harmful"), (0, "safe")):
                        sel = y == lab
                        only_b = int((fb & ~fa & sel).sum()); only_a = int((fa & ~fb & sel).sum())
                        # exact two-sided McNemar (binomial) on discordant pairs
                        from math import comb
                        n = only_a + only_b; kk = min(only_a, only_b)
                        pval = min(1.0, 2 * sum(comb(n, i) for i in range(kk + 1)) / 2 ** n) if n else 1.0
                        print(f"{m} {ds} @{fp} {nm}: {f} flags {int((fb&sel).sum())}, last {int((fa&sel).sum())}; "
                              f"only {f} {only_b}, only last {only_a}; McNemar p={pval:.3f}")
                # paired bootstrap of AUC difference
                d = []
                for _ in range(2000):
                    i = rng.integers(0, len(y), len(y))
                    if y[i].min() == y[i].max(): continue
                    d.append(auc(y[i], sb[i]) - auc(y[i], sa[i]))
                d = np.array(d)
                print(f"{m} {ds} AUC {f}-last = {auc(y,sb)-auc(y,sa):+.4f}  95% CI [{np.percentile(d,2.5):+.4f}, {np.percentile(d,97.5):+.4f}]")
            # per-type safe flagged on EN dev
            for fp in (0.02, 0.05):
                fa = np.array(base["en_scores"]) >= base[f"t{fp}"]; fb = np.array(r["en_scores"]) >= r[f"t{fp}"]
                cnt = {}
                for i, t in enumerate(ten):
                    if yen[i] == 0:
                        c = cnt.setdefault(t, [0, 0, 0]); c[0] += 1; c[1] += int(fa[i]); c[2] += int(fb[i])
                s = sorted(cnt.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))
                print(f"{m} @{fp} EN safe flagged by type (n, last, {f}): " + ", ".join(f"{t} {c[0]}/{c[1]}/{c[2]}" for t, c in s if c[1] + c[2]))

def matched(scores, y, fp):
    """harmful flagged when the threshold is set on this set's own safe items (<= fp of them): recall at equal dev FPR"""
    t = thr_at(scores, y, fp); return flags(scores, y, t)

def seeds():
    """MLP seed spread at each feature's chosen alpha, and dev-FPR-matched recall for every fit."""
    from threadpoolctl import threadpool_limits; threadpool_limits(1)
    from sklearn.preprocessing import StandardScaler
    from sklearn.neural_network import MLPClassifier
    from sklearn.metrics import roc_auc_score as auc
    ytr, yva = labels("train"), labels("val")
    yen = np.concatenate([labels(n) for n in EN_SAFE + EN_HARM]); yol = labels("other-languages-dev")
    print("dev-FPR-matched (threshold set on the dev set's own safe items; oracle, for comparing features only):")
    for f in FEATS:
        for m in ("lr", "mlp"):
            r = json.load(open(f"{HERE}/res.{f}.{m}.json"))
            s_en, s_ol = np.array(r["en_scores"]), np.array(r["ol_scores"])
            print(f"  {f}.{m}: EN harmful @<=2% dev safe {matched(s_en, yen, .02)}  @<=5% {matched(s_en, yen, .05)}; "
                  f"OL @<=2% {matched(s_ol, yol, .02)} @<=5% {matched(s_ol, yol, .05)}")
    for f in FEATS:
        alpha = json.load(open(f"{HERE}/res.{f}.mlp.json"))["param"]
        sc = StandardScaler().fit(feats("train", f))
        Xtr, Xva = sc.transform(feats("train", f)), sc.transform(feats("val", f))
        Xen = sc.transform(np.concatenate([feats(n, f) for n in EN_SAFE + EN_HARM]))
        Xol = sc.transform(feats("other-languages-dev", f))
        acc = []
        for seed in range(10):
            clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", alpha=alpha,
                                early_stopping=False, random_state=seed, max_iter=200).fit(Xtr, ytr)
            sva, sen, sol = (clf.predict_proba(X)[:, 1] for X in (Xva, Xen, Xol))
            row = [auc(yva, sva), auc(yen, sen), auc(yol, sol)]
            for fp in (.02, .05):
                t = thr_at(sva, yva, fp)
                row += [flags(sva, yva, t)[0], *flags(sen, yen, t)[0::2], *flags(sol, yol, t)[0::2], matched(sen, yen, fp)[0]]
            acc.append(row)
        A = np.array(acc, float); mu, sd = A.mean(0), A.std(0)
        names = ["valAUC", "enAUC", "olAUC", "val_h@2", "en_h@2", "en_s@2", "ol_h@2", "ol_s@2", "en_h@dev2",
                 "val_h@5", "en_h@5", "en_s@5", "ol_h@5", "ol_s@5", "en_h@dev5"]
        print(f"{f}.mlp alpha={alpha:g}, 10 seeds mean±sd: " + ", ".join(f"{n} {a:.3f}±{b:.3f}" if n.endswith("AUC") else f"{n} {a:.1f}±{b:.1f}" for n, a, b in zip(names, mu, sd)), flush=True)

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "extract": extract(sys.argv[2:] or list(SETS))
    elif cmd == "rate": rate()
    elif cmd == "report": report()
    elif cmd == "seeds": seeds()
    elif cmd == "fit":
        main()
