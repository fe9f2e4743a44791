#!/usr/bin/env python3
"""Exploration, not part of the product: how far does LoRA (or full) fine-tuning of MiniLM take
TweetEval offensive? Trains on offensive train only and prints val macro-F1 (best threshold) and
ROC-AUC after each epoch. Used to decide how webguard's filter is trained (notes/issue-3-filter.md).

    ~/.cache/webguard/venv-st/bin/python scripts/experiments/lora-offensive-torch.py lora 1e-3 1
    (args: lora|full, learning rate, epochs[, "sched": 6% linear warm-up then linear decay])
    PREP=emoji: each emoji written as its Unicode name's words before tokenising (MiniLM's
    vocabulary has no emoji: 1,348 of the 11,916 training tweets have a [UNK]); skin tones and
    variation selectors dropped, a flag's two regional letters become "flag".
Each epoch's validation scores go to /tmp/offensive-val-<mode>-ep<N>.npy (for
scripts/experiments/offensive-lexical-ensemble.py).
"""
import torch, numpy as np, pathlib, time, sys
from transformers import AutoTokenizer, AutoModel
from sklearn.metrics import f1_score, roc_auc_score
torch.manual_seed(0); torch.set_num_threads(2)
ROOT = pathlib.Path(__file__).resolve().parents[2]
M = str(ROOT / "models" / "all-MiniLM-L6-v2")
tok = AutoTokenizer.from_pretrained(M); model = AutoModel.from_pretrained(M)
D = ROOT.parent / "shared" / "data" / "tweeteval" / "offensive"
tt = D.joinpath("train_text.txt").read_text().splitlines(); yt = [int(x) for x in D.joinpath("train_labels.txt").read_text().split()]
vt = D.joinpath("val_text.txt").read_text().splitlines(); yv = np.array([int(x) for x in D.joinpath("val_labels.txt").read_text().split()])
import os
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from emoji_words import emoji_words
if os.environ.get("PREP") == "emoji":
    tt = [emoji_words(x) for x in tt]; vt = [emoji_words(x) for x in vt]
    print("example:", vt[[i for i, x in enumerate(vt) if "face" in x][0]])
mode = sys.argv[1]; rank = 8
class Lora(torch.nn.Module):
    def __init__(s, base):
        super().__init__(); s.base = base; s.a = torch.nn.Parameter(torch.randn(base.in_features, rank) * 0.01); s.b = torch.nn.Parameter(torch.zeros(rank, base.out_features))
    def forward(s, x): return s.base(x) + (x @ s.a) @ s.b * (16 / rank)
for p in model.parameters(): p.requires_grad = mode == "full"
if mode == "lora":
    for layer in model.encoder.layer:
        for name in ["query", "value"]:
            setattr(layer.attention.self, name, Lora(getattr(layer.attention.self, name)))
        layer.intermediate.dense = Lora(layer.intermediate.dense); layer.output.dense = Lora(layer.output.dense)
head = torch.nn.Sequential(torch.nn.Linear(384 * 2, 256), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(256, 1))
params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
print("trainable", sum(p.numel() for p in params))
opt = torch.optim.AdamW(params, lr=float(sys.argv[2]))
steps = int(sys.argv[3]) * ((len(tt) + 31) // 32)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / (0.06 * steps)) * max(0.0, (steps - s) / steps)) if sys.argv[4:] == ["sched"] else None
def feats(texts):
    e = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    h = model(**e).last_hidden_state; m = e["attention_mask"].unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1); mx = (h + (m - 1) * 1e9).max(1).values
    return torch.cat([torch.nn.functional.normalize(mean, dim=-1) * 10, mx], 1)
def evaluate():
    model.eval(); head.eval(); s = []
    with torch.no_grad():
        for i in range(0, len(vt), 64): s += torch.sigmoid(head(feats(vt[i:i+64]))).squeeze(1).tolist()
    s = np.array(s); model.train(); head.train(); evaluate.scores = s
    return max(f1_score(yv, s >= t, average="macro") for t in np.quantile(s, np.linspace(0.05, 0.95, 91))), roc_auc_score(yv, s)
order = np.random.RandomState(0).permutation(len(tt)); t0 = time.time()
w = torch.tensor([1.0, (len(yt) - sum(yt)) / sum(yt)])
for ep in range(int(sys.argv[3])):
    for k, i in enumerate(range(0, len(order), 32)):
        idx = order[i:i+32]; y = torch.tensor([yt[j] for j in idx], dtype=torch.float)
        z = head(feats([tt[j] for j in idx])).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, pos_weight=w[1])
        opt.zero_grad(); loss.backward(); opt.step()
        if sched: sched.step()
        if k % 100 == 0: print(ep, k, round(loss.item(), 4), round(time.time() - t0), flush=True)
    print("epoch", ep, "val macroF1/auc", evaluate(), round(time.time() - t0), flush=True)
    np.save(f"/tmp/offensive-val-{mode}{os.environ.get('PREP', '')}-ep{ep}.npy", evaluate.scores)
