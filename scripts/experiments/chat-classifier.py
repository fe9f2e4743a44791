# Experiment (twenty-eighth session, notes/issue-13-guard.md "the chat model tuned as a
# classifier"): LoRA-tune a few of SmolLM2-135M's blocks, with a linear head on the last prompt
# token, as a classifier of harmful requests (`TASK=requests`: the safety requests' training
# split -> validation split; the held-out split is never read) or of offensive tweets
# (`TASK=tweets`: TweetEval offensive train -> val). Not part of the build.
#
# The model is our own small PyTorch port read from the shipped GGUF (Q4_1 and Q8_0 dequantised
# in numpy); `MODE=verify` checks its last-token states of every block against the Rust
# engine's (`train-probe --layers 0,...,29` cache, exact products): they agree to 1.7e-6 of a
# state's largest value. Blocks 0..K-1 stay frozen: their outputs at every prompt position are computed
# once and cached (`states-*.pt` in the working folder); blocks K..K+M-1 carry LoRA (rank R, on
# all seven projections) and are trained with the head by AdamW, class-weighted cross-entropy.
#
# Inputs: the GGUF, `webguard tokenize` (for the exact token ids; the binary at $WEBGUARD_BIN),
# `webguard safety-prompts --split train|val --data ../shared/data > $WORK/{train,val}.jsonl`
# for requests. Python with torch, numpy and scikit-learn (~/.cache/webguard/venv-st).
# Usage: cd $WORK && [TASK=tweets] [K=12 M=6 R=8 EP=3 LR=3e-4] python chat-classifier.py
#        MODE=verify python chat-classifier.py   (needs the 30-block cache of probe-layers.py)
import hashlib, json, math, os, struct, subprocess, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from sklearn.metrics import f1_score, roc_auc_score
from request_states import BLOCKS, key, read_states, safe_flagged

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF = os.environ.get("GGUF", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
BIN = os.environ.get("WEBGUARD_BIN", os.path.expanduser("~/.cache/webguard/target/release/webguard"))
SHARED = os.environ.get("SHARED", os.path.join(ROOT, "..", "shared", "data"))
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
DIM, HEADS, KV_HEADS, HEAD_DIM = 576, 9, 3, 64


def read_gguf(path):
    """Every tensor of a GGUF file as f32 numpy, shaped as ggml lists its dimensions reversed."""
    buf, off = open(path, "rb").read(), 4
    assert buf[:4] == b"GGUF"

    def take(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, buf, off)[0]
        off += struct.calcsize("<" + fmt)
        return v

    def string():
        nonlocal off
        n = take("Q")
        off += n
        return buf[off - n : off].decode("utf-8", "replace")

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    take("I")
    n_tensors, n_meta = take("Q"), take("Q")
    meta = {}
    for _ in range(n_meta):
        key = string()
        meta[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    align = meta.get("general.alignment", 32)
    base = (off + align - 1) // align * align
    out = {}
    for name, dims, kind, at in infos:
        n, p = int(np.prod(dims)), base + at
        if kind == 0:
            a = np.frombuffer(buf, np.float32, n, p)
        elif kind == 1:
            a = np.frombuffer(buf, np.float16, n, p).astype(np.float32)
        elif kind == 3:  # Q4_1: f16 scale, f16 minimum, 16 bytes of nibbles (low: 0..15, high: 16..31)
            b = np.frombuffer(buf, np.uint8, n // 32 * 20, p).reshape(-1, 20)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            q = np.concatenate([b[:, 4:] & 15, b[:, 4:] >> 4], axis=1).astype(np.float32)
            a = (q * d + m).reshape(-1)
        elif kind == 8:  # Q8_0: f16 scale, 32 signed bytes
            b = np.frombuffer(buf, np.uint8, n // 32 * 34, p).reshape(-1, 34)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
            a = (b[:, 2:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)
        else:
            raise ValueError(f"{name}: ggml type {kind} not read here")
        out[name] = a.reshape(list(reversed(dims))).copy()
    return out


def tokenize(texts, chunk=200):
    """Token ids of each text, from `webguard tokenize` (the engine's own tokenizer)."""
    ids = []
    for i in range(0, len(texts), chunk):
        part = texts[i : i + chunk]
        r = subprocess.run([BIN, "tokenize", "--models", os.path.dirname(GGUF), *part], capture_output=True, text=True, check=True)
        lines = r.stdout.strip().split("\n")
        assert len(lines) == len(part), r.stderr[:300]
        ids += [json.loads(line) for line in lines]
    return ids


def prompt_ids(messages):
    """The chat template as the engine builds it: default system turn, one user turn, the
    assistant's opening (`<|im_start|>` 1, `<|im_end|>` 2)."""
    system, newline, assistant = tokenize(["system\n" + SYSTEM, "\n", "assistant\n"])
    return [[1] + system + [2] + newline + [1] + u + [2] + newline + [1] + assistant for u in tokenize(["user\n" + m for m in messages])]


class Projection(nn.Module):
    """A frozen weight, plus LoRA factors when `rank` > 0 (B starts at zero)."""

    def __init__(self, w, rank=0, alpha=16):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w), requires_grad=False)
        self.rank = rank
        if rank:
            self.a = nn.Parameter(torch.randn(rank, w.shape[1]) / math.sqrt(w.shape[1]))
            self.b = nn.Parameter(torch.zeros(w.shape[0], rank))
            self.scale = alpha / rank

    def forward(self, x):
        y = x @ self.w.T
        return y + (x @ self.a.T) @ self.b.T * self.scale if self.rank else y


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, cos, sin):
    """Rotates adjacent pairs, as the GGUF converter permuted Q and K for."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


def rope_tables(s):
    freq = torch.tensor([100000.0 ** (-(2.0 * i) / HEAD_DIM) for i in range(HEAD_DIM // 2)], dtype=torch.float64)
    angle = torch.arange(s, dtype=torch.float64)[:, None] * freq[None]
    return angle.cos().float(), angle.sin().float()


class Block(nn.Module):
    def __init__(self, t, i, rank=0):
        super().__init__()
        p = f"blk.{i}."
        self.attn_norm = nn.Parameter(torch.tensor(t[p + "attn_norm.weight"]), requires_grad=False)
        self.ffn_norm = nn.Parameter(torch.tensor(t[p + "ffn_norm.weight"]), requires_grad=False)
        self.q, self.k, self.v, self.o, self.gate, self.up, self.down = (
            Projection(t[p + n + ".weight"], rank) for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        )

    def forward(self, x, cos, sin):
        """`x [b, s, dim]`, right-padded: the causal mask keeps real positions off the padding."""
        b, s, _ = x.shape
        h = rms_norm(x, self.attn_norm)
        q = rope(self.q(h).view(b, s, HEADS, HEAD_DIM).transpose(1, 2), cos, sin)
        k = rope(self.k(h).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2), cos, sin)
        v = self.v(h).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        group = HEADS // KV_HEADS
        a = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, DIM))
        h = rms_norm(x, self.ffn_norm)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def verify(t, work):
    """Our port's last-token states against the Rust engine's for the first validation requests."""
    layers = BLOCKS
    index, states = read_states()
    rows = [json.loads(line) for line in open(os.path.join(work, "val.jsonl"))][:8]
    emb, blocks = torch.tensor(t["token_embd.weight"]), [Block(t, i) for i in range(layers)]
    worst = 0.0
    for r, ids in zip(rows, prompt_ids([r["prompt"] for r in rows])):
        ref = states[index[key(r["prompt"])]]
        with torch.no_grad():
            x, (cos, sin) = emb[torch.tensor(ids)][None], rope_tables(len(ids))
            for l, b in enumerate(blocks):
                x = b(x, cos, sin)
                worst = max(worst, float(np.abs(x[0, -1].numpy() - ref[l]).max() / np.abs(ref[l]).max()))
    print(f"worst relative difference over {len(rows)} requests x {layers} blocks: {worst:.2e}")


def load(task, split, work):
    if task == "tweets":
        d = os.path.join(SHARED, "tweeteval", "offensive")
        text = open(os.path.join(d, f"{split}_text.txt")).read().splitlines()
        labels = open(os.path.join(d, f"{split}_labels.txt")).read().split()
        return [{"prompt": x, "label": "unsafe" if y == "1" else "safe", "type": "tweet"} for x, y in zip(text, labels)]
    return [json.loads(line) for line in open(os.path.join(work, f"{split}.jsonl"))]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("THREADS", 2)))
    work, task, mode = os.environ.get("WORK", "."), os.environ.get("TASK", "requests"), os.environ.get("MODE", "tune")
    K, M, R = int(os.environ.get("K", 12)), int(os.environ.get("M", 6)), int(os.environ.get("R", 8))
    epochs, lr = int(os.environ.get("EP", 3)), float(os.environ.get("LR", 3e-4))
    t = read_gguf(GGUF)
    if mode == "verify":
        return verify(t, work)
    tr, va = load(task, "train", work), load(task, "val", work)
    # Named by the prompts' content too, so a changed split never reads another's states.
    digest = hashlib.sha256(json.dumps([r["prompt"] for r in tr + va]).encode()).hexdigest()[:12]
    cache = os.path.join(work, f"states-{task}-K{K}-{digest}.pt")
    if os.path.exists(cache):
        _, _, states = torch.load(cache)
    else:
        emb, frozen, states, t0 = torch.tensor(t["token_embd.weight"]), [Block(t, i) for i in range(K)], [], time.time()
        with torch.no_grad():
            for n, ids in enumerate(prompt_ids([r["prompt"] for r in tr + va])):
                x, (cos, sin) = emb[torch.tensor(ids)][None], rope_tables(len(ids))
                for b in frozen:
                    x = b(x, cos, sin)
                states.append(x[0].clone())
                if n % 1000 == 0:
                    print(f"states {n} {time.time() - t0:.0f} s", flush=True)
        torch.save((tr, va, states), cache)
    train_states, val_states = states[: len(tr)], states[len(tr) :]
    ty = torch.tensor([r["label"] == "unsafe" for r in tr], dtype=torch.float32)
    vy = np.array([r["label"] == "unsafe" for r in va])
    blocks = nn.ModuleList([Block(t, K + i, R) for i in range(M)])
    head = nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, 1))
    trainable = [p for p in blocks.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": trainable, "lr": lr}, {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    positive_weight = (len(ty) - ty.sum()) / ty.sum()

    def logits(rows, idx):
        s = max(len(rows[i]) for i in idx)
        x = torch.zeros(len(idx), s, DIM)
        for j, i in enumerate(idx):
            x[j, : len(rows[i])] = rows[i]
        cos, sin = rope_tables(s)
        for b in blocks:
            x = b(x, cos, sin)
        return head(torch.stack([x[j, len(rows[i]) - 1] for j, i in enumerate(idx)])).squeeze(-1)

    def batches(rows, size, shuffle):
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = [order[i : i + size] for i in range(0, len(order), size)]
        return [out[i] for i in torch.randperm(len(out)).tolist()] if shuffle else out

    def evaluate(tag):
        blocks.eval()
        s = np.zeros(len(val_states))
        with torch.no_grad():
            for idx in batches(val_states, 64, False):
                s[idx] = torch.sigmoid(logits(val_states, idx)).numpy()
        blocks.train()
        line = f"{tag} ROC-AUC {roc_auc_score(vy, s):.4f}"
        if task == "tweets":
            f1 = max(f1_score(vy, s >= th, average="macro") for th in np.quantile(s, np.linspace(0.01, 0.99, 197)))
            return s, f"{line} macro-F1 {f1:.4f} (best threshold)"
        for recall in (0.95, 0.97):
            line += " @{}: safe flagged {} (sensitive kinds {})".format(recall, *safe_flagged(s, vy, [r["type"] for r in va], recall))
        return s, line

    print(f"{task}: K={K} M={M} R={R} EP={epochs} LR={lr}; train {len(tr)} val {len(va)}", flush=True)
    t0 = time.time()
    for ep in range(epochs):
        total = 0.0
        for n, idx in enumerate(batches(train_states, 16, True)):
            loss = F.binary_cross_entropy_with_logits(logits(train_states, idx), ty[idx], pos_weight=positive_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            if n % 200 == 0:
                print(f"  epoch {ep + 1} batch {n} loss {total / (n + 1):.4f} {time.time() - t0:.0f} s", flush=True)
        s, line = evaluate(f"epoch {ep + 1}")
        print(line, flush=True)
        np.save(os.path.join(work, f"val-scores-{task}-K{K}-M{M}-R{R}-ep{ep + 1}.npy"), s)


if __name__ == "__main__":
    main()
