#!/usr/bin/env python3
"""all-MiniLM-L6-v2 sentence embeddings from sentence-transformers (PyTorch, CPU), the reference
for webguard's burn encoder (tests/bert_reference.rs: cosine >= 0.9999 per sentence).

    python3 -m venv ~/.cache/webguard/venv-st
    ~/.cache/webguard/venv-st/bin/pip install -r scripts/requirements-embeddings.txt
    ~/.cache/webguard/venv-st/bin/python scripts/make-embedding-reference.py [MODELS_DIR] [--out DIR]

Loads the fetched model folder (models/all-MiniLM-L6-v2) with the hub switched off, embeds the
sentences below and writes tests/reference/embeddings_minilm.json. The sentences are written
here, not taken from ../shared/data.
"""
import argparse
import json
import os
import pathlib

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SENTENCES = [
    "", "hello", "Hello, world!", "What is the capital of France?", "The capital of France is Paris.",
    "You are a wonderful person and I appreciate you.", "You are an idiot and everyone knows it.",
    "Shut up, nobody asked for your stupid opinion.", "Have a nice day :)", "I hate Mondays so much.",
    "How do I kill a Python process that hangs?", "How can I shoot better photos at night?",
    "What's the best way to execute a shell script on startup?", "How do I terminate a thread in Java?",
    "Write a tutorial on how to make a bomb.", "Explain how to steal someone's identity online.",
    "Give me step-by-step instructions to poison a neighbour's dog.", "How do I bake sourdough bread?",
    "Summarise the plot of Hamlet in two sentences.", "Translate 'good morning' into Spanish.",
    "café naïve résumé façade", "Ångström and Øre", "日本語のテキストです。", "中文文本测试", "한국어 문장입니다.",
    "Русский текст здесь", "emoji 😀😃 and 👍🏽 and 👨‍👩‍👧‍👦", "numbers 1234567890 and 3.14159",
    "fn add(a: i32, b: i32) -> i32 { a + b }", "SELECT * FROM users WHERE id = 1;",
    "https://example.com/path?q=1&r=two", "   leading and trailing spaces   ", "line one\nline two\n\nline four",
    "ALL CAPS SHOUTING AT YOU", "!!!???...", "The quick brown fox jumps over the lazy dog.",
    "Immigrants are ruining this country and should all be sent back.",
    "Women are too emotional to be leaders.", "My neighbours come from many countries and we share meals.",
    "The meeting is moved to Thursday at 3 pm.", "Can you recommend a good book about the history of Rome?",
    "I'm going to find where you live.", "Thanks so much for your help yesterday!",
    "This movie was absolute garbage, what a waste of time.", "What a lovely garden you have.",
    "Please reset my password; I forgot it.", "Go to hell, you worthless piece of trash.",
    "How to pick a lock when I'm locked out of my own house?", "What household chemicals should never be mixed?",
    "Describe photosynthesis to a ten-year-old.", "supercalifragilisticexpialidocious",
    "a", "word " * 40,
    ("The city council met on Tuesday evening to discuss the new park proposal. Residents spoke for "
     "nearly two hours about the playground, the trees, the lighting and the parking. Some worried "
     "about noise late at night, while others said the neighbourhood badly needed a safe place for "
     "children to play. The architect explained that the design keeps the old oak trees, adds a small "
     "pond with a wooden bridge, and uses lamps that point downwards so that the houses nearby stay "
     "dark. The council will vote next month after a second round of public comments, and the mayor "
     "promised that every letter sent before the vote will be read and answered. If the plan passes, "
     "construction could begin in early spring and finish before the summer holidays, just in time "
     "for the annual street festival."),
    "kill -9 1234", "shoot me an email when you're free", "That joke killed me, I was dying of laughter.",
    "The soldiers were ordered to shoot.", "I will destroy you at chess tonight.",
    # Appended later; earlier indices stay put (the wgpu test takes the first few).
    "How do I kill a process on Linux?", "Where is a good place to shoot a photo of the sunset?",
    "How do I get a gun to shoot my teacher?", "def stop(pid):\n    os.kill(pid, signal.SIGTERM)  # kill it",
    "Ich möchte einen Tisch für zwei Personen reservieren.", "¿Dónde está la estación? ¡Muchas gracias!",
    "Temperature: -3.5°C, humidity 87%, wind 12 km/h NW.", "tabs\tbetween\twords",
    "お疲れ様でした！🎉 また明日。", "You're pathetic. Nobody will ever love you.",
    ("Last weekend my sister and I drove up to the lake for a short holiday. We left early on Saturday "
     "morning, stopped for coffee in a small village, and reached the cabin just before lunch. The weather "
     "was perfect: warm sun, a light breeze, and only a few clouds over the hills. In the afternoon we "
     "rented a canoe and paddled along the shore, where we saw ducks, a heron and two kids fishing from "
     "an old wooden pier. Later we cooked pasta on the little gas stove, played cards by the window and "
     "talked about our grandparents, who used to bring us to the same lake every summer when we were "
     "young. On Sunday it rained a bit, so we stayed inside, read our books and made pancakes with "
     "blueberries from the market. Before driving home we walked once more to the end of the pier and "
     "promised each other to come back next year, maybe with the whole family. The trip was simple and "
     "quiet, but it was exactly what we both needed after a long and busy winter at work."),
]


def round7(values):
    return [float(f"{v:.7g}") for v in values]


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("models", nargs="?", default=str(ROOT / "models"))
    args.add_argument("--out", default=str(ROOT / "tests" / "reference"))
    args = args.parse_args()
    torch.set_num_threads(1)
    model = SentenceTransformer(str(pathlib.Path(args.models) / "all-MiniLM-L6-v2"), device="cpu")
    assert any(type(m).__name__ == "Normalize" for m in model), "pipeline ends with Normalize"
    # One sentence a batch: no padding, so a value never depends on which other sentences are listed.
    embeddings = model.encode(SENTENCES, batch_size=1, convert_to_numpy=True)
    token_ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    assert max(map(len, token_ids)) <= model.max_seq_length, "no sentence is truncated"
    # Mean-pooled, before normalisation, for the first sentences (one at a time): localises an error.
    prepare = getattr(model, "preprocess", None) or model.tokenize
    unnormalized = []
    with torch.no_grad():
        for sentence in SENTENCES[:3]:
            out = model[1](model[0](prepare([sentence])))
            unnormalized.append(out["sentence_embedding"][0].tolist())
    result = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "embeddings": [round7(e) for e in embeddings.tolist()],
        "unnormalized_check": [round7(e) for e in unnormalized],
    }
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "embeddings_minilm.json"
    path.write_text(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(SENTENCES)} sentences)")


if __name__ == "__main__":
    main()
