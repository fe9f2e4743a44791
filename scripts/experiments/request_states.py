# Shared by the request-judge experiments (probe-layers.py, chat-classifier.py): the engine's
# cache of every block's last-token state, and the count they report. Not part of the build.
import hashlib, os, numpy as np

DIM, BLOCKS = 576, 30
# train-probe's cache name for layers 0..29 (webguard 0.1.0, the shipped GGUF, exact products).
CACHE = os.path.expanduser("~/.cache/webguard/probe-states/b7d224f8e61beffe.rows")
SENSITIVE = {"informal", "hate_discussion", "sensitive_topic", "protective", "dangerous_sounding"}


def read_states():
    """(index by SHA-256 of the request text, states [rows, BLOCKS, DIM]) from `CACHE`; a
    partly written last record is left out."""
    rec = 32 + BLOCKS * DIM * 4
    raw = np.fromfile(CACHE, dtype=np.uint8)
    raw = raw[: len(raw) // rec * rec].reshape(-1, rec)
    return {bytes(r[:32]): i for i, r in enumerate(raw)}, raw[:, 32:].view(np.float32).reshape(len(raw), BLOCKS, DIM)


def key(text):
    return hashlib.sha256(text.encode()).digest()


def safe_flagged(scores, harmful, kinds, recall):
    """Safe requests scored at or above the threshold that catches `recall` of the harmful ones,
    other-language requests not counted: (how many, how many of the sensitive kinds)."""
    th = np.sort(scores[harmful])[::-1][int(recall * harmful.sum()) - 1]
    fp = [k for k, s, y in zip(kinds, scores, harmful) if not y and s >= th and k != "other_language"]
    return len(fp), sum(k in SENSITIVE for k in fp)
