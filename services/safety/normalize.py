"""The view recognizers read: text folded so that a disguised entity looks like a plain one.

An entity can be written to slip past patterns over the raw text: a fullwidth or small ``@``
(``＠``, ``﹫``), a fullwidth ``.``, a zero-width space or joiner inside it, a Cyrillic ``о`` or
``е`` in a domain or a category term, fullwidth or Arabic-Indic digits in a card number,
non-breaking spaces or en dashes between its groups. Recognition runs on a folded *view*
instead, one character at a time (the Unicode TR39 "skeleton" idea, narrowed to what
recognizers read):

- format characters (zero-width space/joiners, soft hyphen, bidi marks, BOM) and combining
  marks fold to nothing;
- every space separator folds to ``" "``, every dash to ``"-"``, ideographic full stops to ``"."``;
- every decimal digit of any script folds to its ASCII digit;
- Latin look-alikes from Cyrillic and Greek fold to the Latin letter;
- anything else folds to its NFKD form without combining marks when that is ASCII (fullwidth
  forms, ``＠``, ``﹫``, accented letters, ligatures), and stays as it is otherwise (CJK, …).

Each view character maps back to the original character it came from (``View.origin``), so a
recognizer's span over the view maps onto the original text, and what replaces it covers every
original character of the entity, the invisible ones inside it included. Folding is per
character, so the view of a prefix is a prefix of the view: the stream scrubber folds each
chunk as it comes. ASCII folds to itself; an ASCII chunk costs one ``str.isascii``.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["fold", "fold_char"]

# Latin look-alikes (Unicode confusables, restricted to letters that render the same in
# common fonts), Cyrillic then Greek.
_LOOKALIKES = {
    **dict(zip("аеорсуххіјѕԁԛԝһӏ", "aeopcyxxijsdqwhl", strict=True)),
    **dict(zip("АВЕКМНОРСТХІЈЅУԚԜ", "ABEKMHOPCTXIJSYQW", strict=True)),
    **dict(zip("αοριυνκτχ", "aopiuvktx", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),
    "\u3002": ".",  # ideographic full stop (and the halfwidth one, through NFKD)
    "\ufe12": ".",  # presentation form for vertical ideographic full stop
}


@lru_cache(maxsize=4096)
def fold_char(ch: str) -> str:
    """The view of one non-ASCII character (see the module docstring)."""
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    category = unicodedata.category(ch)
    if category in ("Cf", "Mn", "Me"):
        return ""
    if category == "Nd":
        return chr(48 + unicodedata.decimal(ch))
    if ch.isspace():
        return " " if category == "Zs" else "\n"
    if category == "Pd" or ch == "\u2212":  # dashes, and the minus sign
        return "-"
    decomposed = "".join(
        c for c in unicodedata.normalize("NFKD", ch) if unicodedata.category(c) != "Mn"
    )
    if decomposed and decomposed.isascii():
        return decomposed
    if len(decomposed) == 1 and decomposed in _LOOKALIKES:
        return _LOOKALIKES[decomposed]
    return ch


def fold(text: str) -> tuple[str, list[int] | None]:
    """The view of ``text`` and, for each view character, the index of the original character
    it came from; ``None`` when the view is the text itself (ASCII, the usual case)."""
    if text.isascii():
        return text, None
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch < "\x80":
            out.append(ch)
            origin.append(i)
            continue
        folded = fold_char(ch)
        if folded:
            out.append(folded)
            origin.extend([i] * len(folded))
    return "".join(out), origin
