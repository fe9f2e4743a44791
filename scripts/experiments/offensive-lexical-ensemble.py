#!/usr/bin/env python3
"""Exploration, not part of the product: does a lexical model (TF-IDF word 1-2-grams and
character 2-5-grams, logistic regression, trained on TweetEval offensive train) add to a
fine-tuned MiniLM's scores on TweetEval offensive val? Prints each alone and rank averages
(macro-F1 at the best threshold, ROC-AUC). Used in notes/issue-13-guard.md (session 10).

    ~/.cache/webguard/venv-st/bin/python scripts/experiments/offensive-lexical-ensemble.py \\
        /tmp/offensive-val-full-ep0.npy        # from lora-offensive-torch.py
"""
import pathlib, sys
import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

ROOT = pathlib.Path(__file__).resolve().parents[2]
D = ROOT.parent / "shared" / "data" / "tweeteval" / "offensive"
tt = D.joinpath("train_text.txt").read_text().splitlines()
yt = np.array([int(x) for x in D.joinpath("train_labels.txt").read_text().split()])
vt = D.joinpath("val_text.txt").read_text().splitlines()
yv = np.array([int(x) for x in D.joinpath("val_labels.txt").read_text().split()])


def best_f1(s):
    return max(f1_score(yv, s >= t, average="macro") for t in np.quantile(s, np.linspace(0.05, 0.95, 181)))


def ranks(s):
    return s.argsort().argsort() / len(s)


words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
xt = hstack([words.fit_transform(tt), chars.fit_transform(tt)]).tocsr()
xv = hstack([words.transform(vt), chars.transform(vt)]).tocsr()
lexical = LogisticRegression(C=1, max_iter=2000, class_weight="balanced").fit(xt, yt).predict_proba(xv)[:, 1]
print(f"lexical alone: macro-F1 {best_f1(lexical):.4f}, ROC-AUC {roc_auc_score(yv, lexical):.4f}")
encoder = np.load(sys.argv[1])
print(f"encoder alone: macro-F1 {best_f1(encoder):.4f}, ROC-AUC {roc_auc_score(yv, encoder):.4f}")
for w in [0.1, 0.2, 0.3, 0.4, 0.5]:
    s = (1 - w) * ranks(encoder) + w * ranks(lexical)
    print(f"lexical weight {w}: macro-F1 {best_f1(s):.4f}, ROC-AUC {roc_auc_score(yv, s):.4f}")
