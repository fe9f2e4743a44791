#!/usr/bin/env python3
"""An independent numpy implementation of SmolLM2 (llama) from its GGUF, in float64, as the
reference for webguard's chat model: next-token logits after the prompt, and 32-token greedy
continuations, for a few chat prompts.

    ~/.cache/webguard/venv/bin/python scripts/make-llama-reference.py [MODELS_DIR] [--out FILE]
    (the venv build.sh makes: gguf, tokenizers, numpy)

Weights come from PyPI's `gguf` (its own dequantisation), the prompt ids from PyPI's
`tokenizers` (SmolLM2's BPE built from the GGUF as in make-references.py), the chat text from
the GGUF's template rules. RoPE rotates adjacent pairs (llama.cpp's convention for `llama`,
which the GGUF's permuted Q/K weights expect). Writes tests/reference/llama_smollm2.json.
"""
import argparse
import json
import pathlib

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a KV cache is in one sentence.",
    "List three primary colors.",
    "Translate 'good morning' into Spanish.",
]
TOP = 64           # logits of the most likely ids, per prompt
STRIDE = 193       # plus every 193rd id, so errors outside the top are seen too
NEW_TOKENS = 32


def field(r, key):
    f = r.fields[key]
    return f.contents()


def tokenizer(r):
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                              fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == 3])
    return tk


class Model:
    def __init__(self, r):
        self.t = {}
        for t in r.tensors:
            shape = [int(x) for x in reversed(t.shape)]
            self.t[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
        g = lambda k: field(r, k)
        self.layers = int(g("llama.block_count"))
        self.heads = int(g("llama.attention.head_count"))
        self.kv_heads = int(g("llama.attention.head_count_kv"))
        self.dim = int(g("llama.embedding_length"))
        self.hd = self.dim // self.heads
        self.base = float(g("llama.rope.freq_base"))
        self.eps = float(g("llama.attention.layer_norm_rms_epsilon"))

    def norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x [s, h, hd]; adjacent pairs
        half = self.hd // 2
        freq = self.base ** (-(2.0 * np.arange(half)) / self.hd)
        ang = np.asarray(pos)[:, None] * freq[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def forward(self, ids, cache):
        """Logits [s, vocab] for ids after the cached positions; cache: list of (k, v)."""
        t, s = self.t, len(ids)
        start = 0 if not cache[0] else cache[0][0].shape[0]
        pos = np.arange(start, start + s)
        x = t["token_embd.weight"][ids]
        group = self.heads // self.kv_heads
        for l in range(self.layers):
            p = f"blk.{l}."
            a = self.norm(x, t[p + "attn_norm.weight"])
            q = self.rope((a @ t[p + "attn_q.weight"].T).reshape(s, self.heads, self.hd), pos)
            k = self.rope((a @ t[p + "attn_k.weight"].T).reshape(s, self.kv_heads, self.hd), pos)
            v = (a @ t[p + "attn_v.weight"].T).reshape(s, self.kv_heads, self.hd)
            if cache[l]:
                k = np.concatenate([cache[l][0], k]); v = np.concatenate([cache[l][1], v])
            cache[l] = (k, v)
            total = k.shape[0]
            out = np.empty((s, self.heads, self.hd))
            for h in range(self.heads):
                sc = q[:, h, :] @ k[:, h // group, :].T / np.sqrt(self.hd)
                sc = np.where(np.arange(total)[None, :] <= pos[:, None], sc, -np.inf)
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                out[:, h, :] = (sc / sc.sum(-1, keepdims=True)) @ v[:, h // group, :]
            x = x + out.reshape(s, self.dim) @ t[p + "attn_output.weight"].T
            f = self.norm(x, t[p + "ffn_norm.weight"])
            gate = f @ t[p + "ffn_gate.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (f @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
        return self.norm(x, t["output_norm.weight"]) @ t["token_embd.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="?", default=str(ROOT / "models"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "reference" / "llama_smollm2.json"))
    a = ap.parse_args()
    r = GGUFReader(str(pathlib.Path(a.models) / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    tk, m = tokenizer(r), Model(r)
    end = {tk.token_to_id("<|im_end|>"), tk.token_to_id("<|endoftext|>")}
    cases = []
    for prompt in PROMPTS:
        text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        ids = tk.encode(text, add_special_tokens=False).ids
        cache = [None] * m.layers
        logits = m.forward(ids, cache)[-1]
        top = np.argsort(-logits)[:TOP]
        sampled = np.arange(0, len(logits), STRIDE)
        lse = float(np.log(np.exp(logits - logits.max()).sum()) + logits.max())
        greedy, margins, step = [], [], logits
        for _ in range(NEW_TOKENS):
            order = np.argsort(-step)[:2]
            margins.append(float(step[order[0]] - step[order[1]]))
            nxt = int(order[0])
            greedy.append(nxt)
            if nxt in end:
                break
            step = m.forward([nxt], cache)[-1]
        cases.append({
            "prompt": prompt,
            "ids": ids,
            "top_ids": top.tolist(),
            "top_logits": [round(float(logits[i]), 6) for i in top],
            "sampled_ids": sampled.tolist(),
            "sampled_logits": [round(float(logits[i]), 6) for i in sampled],
            "logsumexp": round(lse, 6),
            "greedy": greedy,
            "greedy_text": tk.decode([g for g in greedy if g not in end], skip_special_tokens=False),
            "greedy_margins": [round(x, 4) for x in margins],
        })
        print(f"{prompt!r} -> {cases[-1]['greedy_text']!r} (smallest top-2 margin {min(margins):.3f})")
    out = {"about": "scripts/make-llama-reference.py: numpy float64 SmolLM2 from the GGUF", "cases": cases}
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
