"""Emoji written as words, for MiniLM (whose vocabulary has none: 1,348 of TweetEval
offensive's 11,916 training tweets hold a [UNK]). An experiment's helper, not the product's
(notes/issue-13-guard.md, twenty-ninth session: level on val, not built)."""
import unicodedata


def emoji_words(text):
    """Each emoji as its Unicode name's words; skin tones, variation selectors and joiners
    dropped; a flag's two regional letters become "flag"."""
    out = []
    for ch in text:
        o = ord(ch)
        if 0x1F3FB <= o <= 0x1F3FF or o in (0xFE0F, 0x200D):
            continue
        if 0x1F1E6 <= o <= 0x1F1FF:
            if not out or out[-1] != " flag ":
                out.append(" flag ")
            continue
        if 0x1F000 <= o <= 0x1FAFF or 0x2600 <= o <= 0x27BF:
            out.append(" " + unicodedata.name(ch, "symbol").lower() + " ")
            continue
        out.append(ch)
    return "".join(out)
