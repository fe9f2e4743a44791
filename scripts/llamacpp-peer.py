#!/usr/bin/env python3
"""llama.cpp (PyPI `llama-cpp-python`, built from source) on the same GGUF: the peer of
`webguard bench chat`, and a second opinion on the chat model's logits.

    python3 -m venv ~/.cache/webguard/venv-llamacpp
    ~/.cache/webguard/venv-llamacpp/bin/pip install llama-cpp-python==0.3.36 numpy   # compiles llama.cpp
    PY=~/.cache/webguard/venv-llamacpp/bin/python
    $PY scripts/llamacpp-peer.py bench --prompt-tokens 128 --new-tokens 128 --threads 2   # JSON
    $PY scripts/llamacpp-peer.py compare      # logits and greedy tokens vs tests/reference/llama_smollm2.json

The peer of `webguard bench --avx2-only chat` (the paths of an x86-64 CPU without AVX-512,
measured on one with it) is llama.cpp built the same way, in a venv of its own:

    python3 -m venv ~/.cache/webguard/venv-llamacpp-avx2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
      -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF" ~/.cache/webguard/venv-llamacpp-avx2/bin/pip \
      install --no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36 numpy
    # check: objdump -d .../llama_cpp/lib/libggml-cpu.so.0.* | grep -c zmm   -> 0

An Intel client core from Alder Lake on (or AMD Zen 5) has AVX-VNNI without AVX-512: llama.cpp
uses it there (`vpdpbusd` on 256-bit registers) and webguard does not (measured: no faster in
its 16-bit tiles, notes/issue-15-kernels.md), so that CPU's pair is `bench --avx2-only` next to
the same build with `-DGGML_AVX_VNNI=ON`, in `~/.cache/webguard/venv-llamacpp-avxvnni` (check:
`grep -c zmm` 0, `grep -c '{vex} vpdpbusd'` above 0).

llama.cpp multiplies Q4_1 weights with activations quantised to 8 bits, so its logits differ
from an exact f32/f64 evaluation by more than webguard's do; `compare` reports by how much.
"""
import argparse
import json
import os
import pathlib
import time

import numpy as np
from llama_cpp import Llama

from peakmem import peak_rss_mb  # noqa: E402  (scripts/peakmem.py)

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(threads, logits_all=False, n_ctx=1024):
    # n_batch = n_ctx: llama-cpp-python keeps n_batch rows of scores without logits_all, and
    # `bench` reads the row of the last token, so a run past 512 tokens needs them all.
    return Llama(model_path=str(GGUF), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 n_batch=n_ctx, logits_all=logits_all, verbose=False, seed=0)


def bench(a):
    llm = load(a.threads)
    base = llm.tokenize(b"The history of the printing press begins with movable type, paper and ink. ",
                        add_bos=False, special=False)
    prompt = (base * (a.prompt_tokens // len(base) + 1))[:a.prompt_tokens]
    # Warm-up, then the measured run: prefill, first token, greedy decode (EOS ignored).
    llm.reset(); llm.eval(prompt[:8])
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    ttft = time.perf_counter() - start
    t0 = time.perf_counter()
    for _ in range(a.new_tokens - 1):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode = time.perf_counter() - t0
    print(json.dumps({
        "llama_cpp_python": __import__("llama_cpp").__version__,
        "threads": a.threads,
        "prefill_tokens_per_s": a.prompt_tokens / ttft,
        "ttft_ms": ttft * 1000,
        "decode_tokens_per_s": (a.new_tokens - 1) / decode,
        "peak_rss_mb": peak_rss_mb(),
    }))


def compare(a):
    ref = json.loads((ROOT / "tests" / "reference" / "llama_smollm2.json").read_text())
    llm = load(a.threads, logits_all=True)
    totals = [0, 0]
    for case in ref["cases"]:
        llm.reset()
        llm.eval(case["ids"])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        ids = case["top_ids"] + case["sampled_ids"]
        want = np.array(case["top_logits"] + case["sampled_logits"])
        greedy = []
        step = logits
        for _ in range(len(case["greedy"])):
            nxt = int(np.argmax(step))
            greedy.append(nxt)
            if nxt in (0, 2):
                break
            llm.eval([nxt])
            step = np.array(llm.scores[llm.n_tokens - 1])
        same = sum(1 for x, y in zip(greedy, case["greedy"]) if x == y)
        first_diff = next((i for i, (x, y) in enumerate(zip(greedy, case["greedy"])) if x != y), None)
        # Teacher-forced: the reference's own continuation fed in one pass; at each position,
        # is the top logit the reference's next token? (Each position judged on its own: one
        # early difference does not decide the rest, unlike free-running greedy.)
        llm.reset()
        llm.eval(case["ids"] + case["greedy"][:-1])
        start = len(case["ids"]) - 1
        forced = sum(1 for i, want_id in enumerate(case["greedy"])
                     if int(np.argmax(llm.scores[start + i])) == want_id)
        totals[0] += forced
        totals[1] += len(case["greedy"])
        print(f"{case['prompt']!r}: max |logit - float64 ref| {np.abs(logits[ids] - want).max():.3f}, "
              f"greedy tokens equal to the reference: {same}/{len(case['greedy'])}"
              + ("" if first_diff is None else f" (first difference at {first_diff})")
              + f"; teacher-forced top-1 equal: {forced}/{len(case['greedy'])}")
    print(f"teacher-forced top-1 equal to the reference, all prompts: {totals[0]}/{totals[1]}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--threads", type=int, default=os.cpu_count())
    c = sub.add_parser("compare")
    c.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    bench(a) if a.cmd == "bench" else compare(a)


if __name__ == "__main__":
    main()
