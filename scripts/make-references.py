#!/usr/bin/env python3
"""Reference values for webguard's exactness tests, computed by independent implementations.

    python3 -m pip install gguf==0.19.0 tokenizers==0.23.3 numpy==2.3.5 safetensors==0.7.0
    python3 scripts/make-references.py [MODELS_DIR] [--out DIR]
        MODELS_DIR defaults to ./models (see fetch-models.sh), DIR to tests/reference

Writes small JSON files (`./build.sh test` checks that the committed ones are reproduced):
  gguf_smollm2.json      every metadata key/value, the tensor table and dequantised samples of one
                         tensor of each type present, as PyPI's `gguf` package reads them
  tokenizer_corpus.json  the test corpus (built here, deterministically)
  tokens_smollm2.json    ids from PyPI's `tokenizers`, SmolLM2's byte-level BPE built from the GGUF
  tokens_minilm.json     ids from PyPI's `tokenizers`, MiniLM's tokenizer.json
  safetensors_minilm.json  MiniLM's tensor names, dtypes, shapes and value samples, as PyPI's
                         `safetensors` (numpy) reads them
Long metadata arrays are recorded as length + sha256 of a canonical byte encoding (see canon())
plus their first elements, so the file stays small while every element is still checked.
"""
import argparse
import hashlib
import json
import pathlib
import random
import struct

import gguf
import numpy as np
from safetensors.numpy import load_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = pathlib.Path(__file__).resolve().parent.parent
_args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_args.add_argument("models", nargs="?", default=str(ROOT / "models"))
_args.add_argument("--out", default=str(ROOT / "tests" / "reference"))
ARGS = _args.parse_args()
MODELS = pathlib.Path(ARGS.models)
OUT = pathlib.Path(ARGS.out)
GGUF_PATH = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_TOKENIZER = MODELS / "all-MiniLM-L6-v2" / "tokenizer.json"
ARRAY_INLINE_MAX = 16


def canon(value) -> bytes:
    """Canonical bytes of a metadata value: strings as u64 length + UTF-8, ints as i64 LE,
    floats as f64 LE, bools as one byte, arrays as b'[' + u64 length + elements + b']'."""
    if isinstance(value, bool):
        return bytes([1 if value else 0])
    if isinstance(value, int):
        return struct.pack("<q", value) if value < 2**63 else struct.pack("<Q", value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, str):
        b = value.encode("utf-8")
        return struct.pack("<Q", len(b)) + b
    if isinstance(value, list):
        return b"[" + struct.pack("<Q", len(value)) + b"".join(canon(v) for v in value) + b"]"
    raise TypeError(type(value))


def gguf_reference():
    reader = gguf.GGUFReader(str(GGUF_PATH))
    metadata = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # header fields the reader exposes as pseudo-keys
        types = [gguf.GGUFValueType(t).name for t in field.types]
        value = field.contents()
        if isinstance(value, float):
            value = float(np.float32(value)) if types[0] == "FLOAT32" else value
        entry = {"key": key, "types": types}
        if isinstance(value, list):
            entry["len"] = len(value)
            entry["sha256"] = hashlib.sha256(canon(value)).hexdigest()
            entry["head"] = value[:ARRAY_INLINE_MAX]
        else:
            entry["value"] = value
        metadata.append(entry)

    tensors = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],  # ggml order: dims[0] is the contiguous one
            "n_elements": int(t.n_elements),
            "offset": int(t.data_offset),  # absolute offset in the file
            "n_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]

    # One tensor of each type present, dequantised by gguf's own numpy code.
    rng = np.random.default_rng(20261123)
    samples = []
    seen = set()
    for t in reader.tensors:
        if t.tensor_type.name in seen:
            continue
        seen.add(t.tensor_type.name)
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        assert values.size == t.n_elements
        n = min(values.size, 4096)
        idx = np.sort(rng.choice(values.size, size=n, replace=False))
        idx = np.unique(np.concatenate([np.arange(min(256, values.size)), idx, [values.size - 1]]))
        samples.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "indices": idx.tolist(),
                "values": [float(v) for v in values[idx]],
                "sum": float(values.astype(np.float64).sum()),
                "sum_abs": float(np.abs(values.astype(np.float64)).sum()),
            }
        )
    return {
        "file": GGUF_PATH.name,
        "version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
        "dequantized": samples,
    }


def corpus():
    """>= 300 strings covering what a tokenizer can get wrong."""
    fixed = [
        "", " ", "  ", "\n", "\n\n", "\t", " \n ", "a", "A", "Hello world", "Hello, world!",
        "What is the capital of France?", "The capital of France is Paris.",
        "  leading spaces", "trailing spaces   ", "many     inner      spaces", "tabs\tand\ttabs",
        "line one\nline two\n\nline four", "windows\r\nline endings\r\n", "mixed \n\t \r\n whitespace",
        "I'm sure you're right, it's what they'd've said", "don't won't can't shan't", "'s 't 're 've 'm 'll 'd",
        "UPPER lower MiXeD", "numbers 1234567890 and 3.14159 and -42 and 1e-9", "2026-11-23T23:03:29Z",
        "phone +1 (555) 010-9999", "$100.00 €50 £20 ¥1000", "100% sure, 50/50 chance",
        "café naïve résumé façade coöperate", "Ångström Øre Straße", "Ελληνικά κείμενο", "Русский текст здесь",
        "עברית", "العربية", "हिन्दी भाषा", "ไทย", "日本語のテキスト", "中文文本测试", "한국어 텍스트",
        "混合 text 和 English", "e\u0301 (combining acute)", "\u00e9 (precomposed)", "ﬁ ligature", "Ⅻ roman",
        "emoji 😀😃😄", "👍🏽 skin tone", "👨‍👩‍👧‍👦 family ZWJ", "🏳️‍🌈 flag", "🇫🇷🇩🇪 flags", "❤️ heart", "🤖 robot says hi",
        "zero\u200bwidth\u200bspace", "soft\u00adhyphen", "nbsp\u00a0here", "bidi \u202eoverride\u202c end",
        "def main():\n    print('hello')\n", "fn add(a: i32, b: i32) -> i32 { a + b }",
        "if (x < 10 && y >= 3) { return x << 2; }", "SELECT * FROM users WHERE id = 1;",
        "<div class=\"x\">&amp;</div>", "https://example.com/path?q=1&r=two#frag", "user@example.com",
        "@user you are an idiot #rude", "have a nice day :) :-( ;-)", "!!!???...,,,;;;", "----====____",
        "~`^*|\\/", "a\u0000b", "\u0007bell", "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "<|endoftext|>", "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start", "im_start|>",
        "[CLS] [SEP] [MASK] [PAD] [UNK]", "[cls] lowercase special", "How do I kill a Python process?",
        "How can I shoot better photos at night?", "Write a tutorial on how to make a bomb",
        "You are a wonderful person.", "I hate Mondays.", "supercalifragilisticexpialidocious",
        "pneumonoultramicroscopicsilicovolcanoconiosis", "a" * 300, "ab " * 120, "🙂" * 40,
        "x" * 101 + " long word over WordPiece's limit", "unaffable unbelievably re-tokenization",
    ]
    pieces = [
        "hello", "world", "Paris", "the", " ", "  ", "\n", "\t", "123", "4.5", "é", "ü", "ß", "日本", "中文",
        "한국", "😀", "👍🏽", "👨‍👩‍👧", "'s", "'ll", "don't", "?", "!", "...", "—", "–", "\"quoted\"",
        "(parens)", "[brackets]", "{braces}", "<|im_end|>", "#tag", "@user", "http://x.y", "ﬁ", "Ω", "√2",
        "CAPS", "snake_case", "camelCase", "x=1;", "->", "::", "//", "/*", "*/", "\u200d", "\u00a0",
    ]
    rng = random.Random(20261123)
    generated = []
    while len(fixed) + len(generated) < 340:
        n = rng.randint(1, 12)
        generated.append("".join(rng.choice(pieces) for _ in range(n)))
    return fixed + generated


def smollm2_tokenizer(reader):
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # llama.cpp's `smollm` pre-tokenizer: single digits, then the GPT-2 byte-level split.
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == 3])  # 3 = CONTROL
    return tk


def token_reference(tk, texts, add_special_tokens):
    rows = []
    for s in texts:
        ids = tk.encode(s, add_special_tokens=add_special_tokens).ids
        rows.append({"ids": ids, "decoded": tk.decode(ids, skip_special_tokens=False)})
    return rows


def safetensors_reference():
    tensors = load_file(str(MODELS / "all-MiniLM-L6-v2" / "model.safetensors"))
    rng = np.random.default_rng(7)
    out = []
    for name in sorted(tensors):
        values = tensors[name].astype(np.float32).reshape(-1)
        idx = np.sort(rng.choice(values.size, size=min(values.size, 64), replace=False))
        out.append({
            "name": name,
            "dtype": str(tensors[name].dtype),
            "shape": list(tensors[name].shape),
            "indices": idx.tolist(),
            "values": [float(v) for v in values[idx]],
            "sum": float(values.astype(np.float64).sum()),
        })
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    texts = corpus()
    write("tokenizer_corpus.json", texts)
    write("gguf_smollm2.json", gguf_reference())
    write("tokens_smollm2.json", token_reference(smollm2_tokenizer(gguf.GGUFReader(str(GGUF_PATH))), texts, False))
    minilm = Tokenizer.from_file(str(MINILM_TOKENIZER))
    minilm.no_truncation()
    minilm.no_padding()
    write("tokens_minilm.json", token_reference(minilm, texts, True))
    write("safetensors_minilm.json", safetensors_reference())


def write(name, obj):
    path = OUT / name
    path.write_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
