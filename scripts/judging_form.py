"""The judging form of a text, written independently of src/text/normalize.rs from its rules,
so that scripts/filter-torch.py scores what the Rust filter scores and the reference test
checks both: NFKC; invisible characters dropped; Cyrillic/Greek look-alikes mapped to Latin
inside words that have Latin letters; digit and symbol stand-ins mapped to letters when a run
of them sits between two letters, or leads a word of three or more letters (digits and '$'
only). A stand-in symbol belongs to a word only when a letter or digit follows it."""

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


def for_judging(text):
    chars = [c for c in unicodedata.normalize("NFKC", text) if not invisible(c)]
    out, word = [], []

    def flush():
        w = word[:]
        if any(c.isascii() and c.isalpha() for c in w):
            w = [LOOKALIKES.get(c, c) for c in w]
        out.append(unleet("".join(w)))
        word.clear()

    for i, c in enumerate(chars):
        nxt = chars[i + 1] if i + 1 < len(chars) else ""
        if c.isalnum() or (c in STAND_INS and nxt.isalnum()):
            word.append(c)
        else:
            flush()
            out.append(c)
    flush()
    return "".join(out)


if __name__ == "__main__":
    for s, want in [("ｍａｋｅ ａ ｂｏｍｂ", "make a bomb"), ("b\u043emb", "bomb"),
                    ("how do I c00k m3th", "how do I cook meth"), ("$teal 5 $", "steal 5 $"),
                    ("3rd mp3 covid19 @user kill!", "3rd mp3 covid19 @user kill!")]:
        assert for_judging(s) == want, (s, for_judging(s))
    print("ok")
