"""Safety categories from configurable term lists: a category is an entity type whose entities are
words or phrases (case-insensitive, whole words), with the same actions as PII.

    categories:
      WEAPONS: [pipe bomb, nerve agent]

The words of a phrase match across up to four whitespace characters, hyphens or underscores
("pipe  bomb", "pipe\nbomb", "pipe-bomb"). Terms match on the scrubber's folded view, so a
zero-width character inside a word or a Cyrillic look-alike letter does not hide one.

Streaming: a position is unsettled only while the text from it to the end is a prefix of some
term (or a whole term whose next character, a word boundary or not, is still unknown), so clean
text is held back only while its last word could still begin a term.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from services.safety.normalize import fold_char
from services.safety.recognizers import Span

_WORD_START = re.compile(r"(?<!\w)\w")
_GAP = r"[\s\-_]"  # what may join the words of a phrase
_SPACE = re.compile(rf"{_GAP}+")
_MAX_GAP = 4  # whitespace characters allowed between the words of a phrase


def _fold(text: str) -> str:
    return "".join(c if c.isascii() else fold_char(c) for c in text)


def _chars(word: str) -> list[str]:
    """A pattern per character of a (lower-case) term word: what it folds to in either case."""
    out = []
    for c in word:
        variants = sorted({v.lower() for v in (_fold(c), _fold(c.upper())) if v})
        if not variants:
            continue  # (a character that folds to nothing: the view never shows it)
        out.append(
            re.escape(variants[0])
            if len(variants) == 1
            else "(?:" + "|".join(re.escape(v) for v in variants) + ")"
        )
    return out


def _first_variants(token: str) -> set[str]:
    """First characters (lower case) a term's first-character pattern can match."""
    alternatives = token[3:-1].split("|") if token.startswith("(?:") else [token]
    return {re.sub(r"\\(.)", r"\1", a)[0].lower() for a in alternatives if a}


class TermListRecognizer:
    """Whole-word, case-insensitive matches of a category's terms."""

    def __init__(self, category: str, terms: Iterable[str]) -> None:
        normalized = sorted({" ".join(t.split()).lower() for t in terms if t.strip()})
        if not normalized:
            raise ValueError(f"category {category!r} has no terms")
        for t in normalized:
            if not (t[0].isalnum() or t[0] == "_") or not (t[-1].isalnum() or t[-1] == "_"):
                raise ValueError(
                    f"category {category!r}: term {t!r} must begin and end with a letter or digit"
                )
        self._type = category
        self._terms = normalized
        # Terms match on the folded view, so each character matches what its lower and upper
        # case fold to ("é" as "e", a Cyrillic "н" as itself or, upper case, as "H").
        words = [[_chars(w) for w in t.split()] for t in normalized]
        gap = rf"{_GAP}{{1,{_MAX_GAP}}}"
        # Longest first, so a longer phrase wins over a term it starts with.
        order = sorted(range(len(words)), key=lambda i: len(normalized[i]), reverse=True)
        alternatives = "|".join(gap.join("".join(w) for w in words[i]) for i in order)
        self._re = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        # Any beginning of a term: each token (a character, a gap) optional after the first.
        prefixes = []
        for term in words:
            tokens = [tok for k, w in enumerate(term) for tok in ([gap] if k else []) + w]
            nested = ""
            for tok in reversed(tokens[1:]):
                nested = f"(?:{tok}{nested})?"
            prefixes.append(tokens[0] + nested)
        self._prefix = re.compile("|".join(f"(?:{p})" for p in prefixes), re.IGNORECASE)
        self._first = {v for term in words for v in _first_variants(term[0][0])}
        self._longest = max(len(t) + (_MAX_GAP - 1) * t.count(" ") for t in normalized)
        self._longest = 2 * self._longest  # (a folded character can be two: "ﬁ")
        self.window = self._longest + 1

    @property
    def entity_type(self) -> str:
        return self._type

    @property
    def max_length(self) -> int:
        return self._longest

    @property
    def terms(self) -> list[str]:
        return list(self._terms)

    def find(self, text: str) -> list[Span]:
        return [Span(s, e, self._type) for s, e, _ in self.scan(text, 0, len(text))]

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        return [(m.start(), m.end(), True) for m in self._re.finditer(buf, lo, n)]

    def pending_start(self, buf: str, lo: int, n: int) -> int | None:
        for m in _WORD_START.finditer(buf, max(lo, n - self._longest), n):
            s = m.start()
            if buf[s].lower() in self._first and self._prefix.fullmatch(buf, s, n) is not None:
                return s
        return None

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        return self.scan(buf, lo, n), self.pending_start(buf, lo, n)

    def __repr__(self) -> str:
        return f"TermListRecognizer({self._type!r}, {len(self._terms)} terms)"
