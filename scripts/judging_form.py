"""The judging form of a text, written independently of src/text/normalize.rs from its rules,
so that scripts/filter-torch.py scores what the Rust filter scores and the reference test
checks both: NFKC; invisible characters dropped; Cyrillic/Greek look-alikes mapped to Latin
inside words that have Latin letters; digit and symbol stand-ins mapped to letters when a run
of them sits between two letters, or leads a word of three or more letters (digits and '$'
only), digits first, then look-alikes. A stand-in symbol belongs to a word only when a letter
or digit follows it, past other stand-in symbols. Passes repeat until nothing changes (at most
four)."""

import unicodedata

INVISIBLE_RANGES = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x3164, 0x3164),
    (0xFFA0, 0xFFA0), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
]

LOOKALIKES = dict(zip(
    "авеёкмнорстухіјѕԁɡһӏАВЕКМНОРСТУХІЈЅ" "αβεικνορτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "abeekmhopctyxijsdghlABEKMHOPCTYXIJS" "abeikvoptuxABEZHIKMNOPTYX",
))

STAND_INS = {"0": "o", "1": "i", "!": "i", "|": "i", "3": "e", "4": "a", "@": "a",
             "5": "s", "$": "s", "7": "t", "8": "b", "9": "g"}


def invisible(c):
    o = ord(c)
    return any(a <= o <= b for a, b in INVISIBLE_RANGES)


def unleet(word):
    letters = sum(c.isalpha() for c in word)
    out, i = [], 0
    while i < len(word):
        c = word[i]
        if c.isalpha() or c not in STAND_INS:
            out.append(c)
            i += 1
            continue
        end = i
        while end < len(word) and not word[end].isalpha() and word[end] in STAND_INS:
            end += 1
        run = word[i:end]
        left = i > 0 and word[i - 1].isalpha()
        right = end < len(word) and word[end].isalpha()
        leading = i == 0 and right and letters >= 3 and all(ch.isdigit() or ch == "$" for ch in run)
        mapped = (left and right) or leading
        out.extend(STAND_INS[ch] if mapped else ch for ch in run)
        i = end
    return "".join(out)


def judging_pass(text):
    visible = "".join(c for c in text if not invisible(c))
    chars = [c for c in unicodedata.normalize("NFKC", visible) if not invisible(c)]
    out, word = [], []

    def flush():
        w = unleet("".join(word))
        if any(c.isascii() and c.isalpha() for c in w):
            w = "".join(LOOKALIKES.get(c, c) for c in w)
        out.append(w)
        word.clear()

    def symbol(c):
        return not c.isalnum() and c in STAND_INS

    for i, c in enumerate(chars):
        j = i + 1
        while j < len(chars) and symbol(chars[j]):
            j += 1
        word_follows = j < len(chars) and chars[j].isalnum()
        if c.isalnum() or (symbol(c) and word_follows):
            word.append(c)
        else:
            flush()
            out.append(c)
    flush()
    return "".join(out)


def for_judging(text):
    out = judging_pass(text)
    for _ in range(3):
        again = judging_pass(out)
        if again == out:
            break
        out = again
    return out


# Texts for the Rust reference test (`judging_forms_match_the_python_rules` in
# src/text/normalize.rs): the rules' own cases, then random mixes of the characters they act on
# (a fixed seed).
REFERENCE_ALPHABET = ("abeo kms0134$@!.\u0301\u0308\u200b\u00ad\u0430\u0435\u043e\u0432"
                      "\u043c\u0441\u03b9\u03bfｂ１ﬁé")
REFERENCE_CASES = ["ｍａｋｅ ａ ｂｏｍｂ", "b\u043emb", "how do I c00k m3th", "$teal 5 $",
                   "3rd mp3 covid19 @user kill!", "make a в0мв", "$h1t", "$$ell", "привет мир",
                   "e\u200b\u0301", "a\u0435\u0301", "h4ck my ex's em@il", "ki\u00adll\ufeff him"]


def reference(count=400, seed=7):
    import json
    import random
    rng = random.Random(seed)
    texts = list(REFERENCE_CASES)
    for _ in range(count):
        texts.append("".join(rng.choice(REFERENCE_ALPHABET) for _ in range(rng.randint(1, 16))))
    return json.dumps({"about": "scripts/judging_form.py reference", "cases": [
        {"text": t, "judged": for_judging(t)} for t in texts]}, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["reference"]:
        print(reference())
        sys.exit(0)
    for s, want in [("ｍａｋｅ ａ ｂｏｍｂ", "make a bomb"), ("b\u043emb", "bomb"),
                    ("how do I c00k m3th", "how do I cook meth"), ("$teal 5 $", "steal 5 $"),
                    ("3rd mp3 covid19 @user kill!", "3rd mp3 covid19 @user kill!"),
                    ("make a в0мв", "make a bomb"), ("$h1t", "shit")]:
        assert for_judging(s) == want, (s, for_judging(s))
    print("ok")
