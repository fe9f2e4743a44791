# Exploration, not part of the product (notes/issue-13-guard.md, twenty-ninth session):
#   ~/.cache/webguard/venv-st/bin/python scripts/experiments/offensive-frozen-emoji.py plain emoji
# Frozen MiniLM features (embedding + mean/max of layers 2,4,6, as the shipped heads read) for
# TweetEval offensive, with and without emoji names; logistic regression on train, val macro-F1.
import sys, numpy as np, torch, pathlib
from transformers import AutoTokenizer, AutoModel
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import f1_score, roc_auc_score
torch.set_num_threads(2)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from emoji_words import emoji_words
ROOT = pathlib.Path(__file__).resolve().parents[2]
M = str(ROOT / "models" / "all-MiniLM-L6-v2"); tok = AutoTokenizer.from_pretrained(M); model = AutoModel.from_pretrained(M).eval()
D = ROOT.parent / "shared" / "data" / "tweeteval" / "offensive"
tt = D.joinpath("train_text.txt").read_text().splitlines(); yt = np.array([int(x) for x in D.joinpath("train_labels.txt").read_text().split()])
vt = D.joinpath("val_text.txt").read_text().splitlines(); yv = np.array([int(x) for x in D.joinpath("val_labels.txt").read_text().split()])
def feats(texts):
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            e = tok(texts[i:i+64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hs = model(**e, output_hidden_states=True).hidden_states; m = e["attention_mask"].unsqueeze(-1).float()
            mean = lambda h: (h * m).sum(1) / m.sum(1); mx = lambda h: (h + (m - 1) * 1e9).max(1).values
            f = [torch.nn.functional.normalize(mean(hs[6]), dim=-1)] + [mean(hs[k]) for k in (2, 4, 6)] + [mx(hs[k]) for k in (2, 4, 6)]
            out.append(torch.cat(f, 1).numpy())
    return np.concatenate(out)
for prep in sys.argv[1:]:
    f = (lambda x: x) if prep == "plain" else emoji_words
    Xt = feats([f(x) for x in tt]); Xv = feats([f(x) for x in vt])
    sc = StandardScaler().fit(Xt)
    for C in (0.01, 0.03, 0.1):
        lr = LogisticRegression(C=C, max_iter=3000, class_weight="balanced").fit(sc.transform(Xt), yt)
        s = lr.predict_proba(sc.transform(Xv))[:, 1]
        f1 = max(f1_score(yv, s >= t, average="macro") for t in np.quantile(s, np.linspace(0.05, 0.95, 91)))
        print(prep, C, "val macro-F1 %.4f AUC %.4f" % (f1, roc_auc_score(yv, s)), flush=True)
