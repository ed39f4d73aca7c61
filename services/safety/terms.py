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

from services.safety.recognizers import Span

_WORD_START = re.compile(r"(?<!\w)\w")
_GAP = r"[\s\-_]"  # what may join the words of a phrase
_SPACE = re.compile(rf"{_GAP}+")
_MAX_GAP = 4  # whitespace characters allowed between the words of a phrase


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
        # Longest first, so a longer phrase wins over a term it starts with.
        gap = rf"{_GAP}{{1,{_MAX_GAP}}}"
        alternatives = "|".join(
            gap.join(re.escape(w) for w in t.split())
            for t in sorted(normalized, key=len, reverse=True)
        )
        self._re = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        self._prefixes = {t[:i] for t in normalized for i in range(1, len(t) + 1)}
        self._first = {t[0] for t in normalized}
        self._longest = max(len(t) + (_MAX_GAP - 1) * t.count(" ") for t in normalized)
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
            if buf[s].lower() in self._first:
                # Gaps read as one space: never less pending than the regex.
                tail = _SPACE.sub(" ", buf[s:n].lower())
                if tail in self._prefixes:
                    return s
        return None

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        return self.scan(buf, lo, n), self.pending_start(buf, lo, n)

    def __repr__(self) -> str:
        return f"TermListRecognizer({self._type!r}, {len(self._terms)} terms)"
