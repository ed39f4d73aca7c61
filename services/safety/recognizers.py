"""Recognizers for structured PII and secrets.

Every recognizer is a bounded regular expression plus, where the entity carries a
checksum or a structure, a validator (Luhn for cards, mod-97 for IBANs, the SSA
ranges for SSNs, ``ipaddress`` for IPv6, JSON header for JWTs). Offsets are
character offsets into the scanned ``str``.

Streaming support (used by :mod:`services.safety.scrubber`): a
:class:`StreamingRecognizer` can also say, for a text known only up to ``n``,
the earliest position whose match attempt is *not settled* yet, i.e. could give
a different result once more text arrives (``pending_start``). A regex attempt
at ``s`` reads at most the character before ``s`` (lookbehind), the maximal run
of characters from ``run_chars`` starting at ``s``, and one character after that
run; and never more than ``window`` characters from ``s``. So the attempt is
settled once that run has ended inside the known text, or ``s + window <= n``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Protocol, runtime_checkable

__all__ = [
    "IBAN_LENGTHS",
    "NerBackend",
    "PrivateKeyRecognizer",
    "Recognizer",
    "RegexRecognizer",
    "Span",
    "StreamingRecognizer",
    "default_recognizers",
    "find_all",
    "iban_valid",
    "jwt_valid",
    "load_ner_backend",
    "luhn_valid",
    "merge_spans",
    "shared_default_recognizers",
    "ssn_valid",
]


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """A detected entity: ``text[start:end]`` is of type ``type``."""

    start: int
    end: int
    type: str


@runtime_checkable
class Recognizer(Protocol):
    """Finds entities of one type."""

    @property
    def entity_type(self) -> str: ...

    @property
    def max_length(self) -> int:
        """The longest entity this recognizer can report."""
        ...

    def find(self, text: str) -> list[Span]: ...


@runtime_checkable
class StreamingRecognizer(Recognizer, Protocol):
    """A recognizer the stream scrubber can drive incrementally."""

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        """Raw candidate matches ``(start, end, valid)`` of ``buf[:n]`` from ``lo``.

        ``buf[:lo]`` is context only (for lookbehind); candidates never start before lo.
        """
        ...

    def pending_start(self, buf: str, lo: int, n: int) -> int | None:
        """Earliest position >= lo whose match attempt may still change, or None."""
        ...

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        """``(scan(buf, lo, n), pending_start(buf, lo, n))`` in one call (the hot path)."""
        ...


# --------------------------------------------------------------------------- validators


def luhn_valid(digits: str) -> bool:
    """Luhn checksum over a string of ASCII digits."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_valid(value: str) -> bool:
    digits = value.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def ssn_valid(value: str) -> bool:
    """US SSN ``AAA-GG-SSSS``: area not 000/666/9xx, group not 00, serial not 0000."""
    m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", value)
    if m is None:
        return False
    area, group, serial = m.groups()
    if area in ("000", "666") or area[0] == "9":
        return False
    return group != "00" and serial != "0000"


IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27,
    "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MT": 31, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PT": 25, "QA": 29, "RO": 24,
    "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29,
}  # fmt: skip


def iban_valid(value: str) -> bool:
    """Known country, right length for it, and ISO 7064 mod-97 == 1."""
    iban = value.replace(" ", "")
    if len(iban) < 5 or not iban.isascii() or not iban.isalnum():
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is None or len(iban) != expected or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def _ipv4_valid(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)


def _ipv6_valid(value: str) -> bool:
    if value.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_valid(value: str) -> bool:
    """Three base64url segments whose header decodes to a JSON object with "alg"."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return False
    try:
        header = json.loads(_b64url_decode(parts[0]))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


def _phone_valid(value: str) -> bool:
    digits = sum(ch.isdigit() for ch in value)
    if value.startswith("+"):
        return 8 <= digits <= 15
    if value.startswith("0"):
        return 10 <= digits <= 12
    return digits == 10


def _always(_: str) -> bool:
    return True


# --------------------------------------------------------------------------- recognizers


class RegexRecognizer:
    """A bounded regex plus validator; see the module docstring for the stream contract.

    ``start`` must match (at s, with its lookbehind) wherever ``pattern`` can match at s;
    ``run_chars`` is a character class containing every character ``pattern`` can consume,
    such that its lookaheads read at most one character past that run; ``window`` bounds
    how far past ``s`` an attempt can read.
    """

    def __init__(
        self,
        entity_type: str,
        pattern: str,
        *,
        start: str,
        run_chars: str,
        max_length: int,
        window: int,
        validator: Callable[[str], bool] = _always,
        flags: int = 0,
    ) -> None:
        self._type = entity_type
        self._re = re.compile(pattern, flags)
        self._start = re.compile(start)
        self._run = re.compile(f"[{run_chars}]*")
        self._max_length = max_length
        self.window = window
        self._validate = validator

    @property
    def entity_type(self) -> str:
        return self._type

    @property
    def max_length(self) -> int:
        return self._max_length

    def find(self, text: str) -> list[Span]:
        return [Span(s, e, self._type) for s, e, ok in self.scan(text, 0, len(text)) if ok]

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        for m in self._re.finditer(buf, lo, n):
            value = m.group()
            ok = len(value) <= self._max_length and self._validate(value)
            out.append((m.start(), m.end(), ok))
        return out

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        # ``start`` is necessary for a match: no start, no candidates and nothing pending.
        if self._start.search(buf, lo, n) is None:
            return [], None
        return self.scan(buf, lo, n), self.pending_start(buf, lo, n)

    def pending_start(self, buf: str, lo: int, n: int) -> int | None:
        pos = max(lo, n - self.window + 1)
        while pos < n:
            m = self._start.search(buf, pos, n)
            if m is None:
                return None
            s = m.start()
            run_end = self._run.match(buf, s, n)
            end = run_end.end() if run_end is not None else s
            if end >= n:
                return s
            # Every start inside this run has a run ending at the same place: settled.
            pos = max(end, s + 1)
        return None

    def __repr__(self) -> str:
        return f"RegexRecognizer({self._type!r})"


_PK_BEGIN = "-----BEGIN "
_PK_HEADER = re.compile(r"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY-----")


class PrivateKeyRecognizer:
    """PEM private keys, ``-----BEGIN ... PRIVATE KEY-----`` through the matching END line."""

    window = 16 * 1024

    def __init__(self, max_length: int = 12 * 1024) -> None:
        self._max_length = max_length
        self._re = re.compile(
            r"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY-----"
            rf"[\s\S]{{0,{max_length}}}?-----END \1PRIVATE KEY-----"
        )

    @property
    def entity_type(self) -> str:
        return "PRIVATE_KEY"

    @property
    def max_length(self) -> int:
        return self._max_length + 200

    def find(self, text: str) -> list[Span]:
        return [Span(s, e, "PRIVATE_KEY") for s, e, ok in self.scan(text, 0, len(text)) if ok]

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        return [(m.start(), m.end(), True) for m in self._re.finditer(buf, lo, n)]

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        if buf.find("-", lo, n) < 0:
            return [], None
        return self.scan(buf, lo, n), self.pending_start(buf, lo, n)

    def _settled(self, buf: str, s: int, n: int) -> bool:
        if s + self.window <= n:
            return True
        if self._re.match(buf, s, n) is not None:
            return True  # lazy: the first END line is already known
        # Header impossible with what is known -> dead attempt.
        return s + 80 <= n and _PK_HEADER.match(buf, s, n) is None

    def pending_start(self, buf: str, lo: int, n: int) -> int | None:
        pos = max(lo, n - self.window + 1)
        while True:
            s = buf.find(_PK_BEGIN, pos, n)
            if s < 0:
                break
            if not self._settled(buf, s, n):
                return s
            pos = s + 1
        # A partial "-----BEGIN " at the very end may still become one.
        for s in range(max(pos, n - len(_PK_BEGIN) + 1), n):
            if _PK_BEGIN.startswith(buf[s:n]):
                return s
        return None

    def __repr__(self) -> str:
        return "PrivateKeyRecognizer()"


_LOCAL = r"A-Za-z0-9._%+\-"


def default_recognizers() -> list[StreamingRecognizer]:
    """The built-in recognizers, most specific first."""
    return [
        RegexRecognizer(
            "EMAIL",
            rf"(?<![{_LOCAL}])[{_LOCAL}]{{1,64}}@(?:[A-Za-z0-9\-]{{1,63}}\.){{1,8}}"
            r"[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
            start=rf"(?<![{_LOCAL}])[{_LOCAL}]",
            run_chars=rf"{_LOCAL}@",
            max_length=254,
            window=700,
        ),
        RegexRecognizer(
            "PHONE",
            r"(?<![\w+])(?<!\d[ .\-/])(?:"
            r"\+[1-9]\d{0,2}(?:[ .\-]?\(?\d{1,4}\)?){2,5}"
            r"|(?:\(\d{3}\) ?|\d{3}[\-. ])\d{3}[\-. ]\d{4}"
            r"|0\d{2,4}(?:[ /\-]\d{3,8}){1,2}"
            r")(?![\w]|[\-./ ]\d)",
            start=r"(?<![\w+])[+(0-9]",
            run_chars=r"0-9 ().+/\-",
            max_length=40,
            window=64,
            validator=_phone_valid,
        ),
        RegexRecognizer(
            "CREDIT_CARD",
            r"(?<![\d])(?:\d{4}(?P<sep>[ \-]?)\d{4}(?P=sep)\d{4}(?P=sep)\d{1,4}"
            r"(?:(?P=sep)\d{3})?|\d{4}[ \-]\d{6}[ \-]\d{5})(?!\d)",
            start=r"(?<!\d)\d",
            run_chars=r"0-9 \-",
            max_length=23,
            window=32,
            validator=_card_valid,
        ),
        RegexRecognizer(
            "US_SSN",
            r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d]|-\d)",
            start=r"(?<![\d\-])\d",
            run_chars=r"0-9\-",
            max_length=11,
            window=16,
            validator=ssn_valid,
        ),
        RegexRecognizer(
            "IBAN",
            r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Z0-9])",
            start=r"(?<![A-Z0-9])[A-Z]",
            run_chars=r"A-Z0-9 ",
            max_length=43,
            window=48,
            validator=iban_valid,
        ),
        RegexRecognizer(
            "IPV4",
            r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)",
            start=r"(?<![\d.])\d",
            run_chars=r"0-9.",
            max_length=15,
            window=20,
            validator=_ipv4_valid,
        ),
        RegexRecognizer(
            "IPV6",
            r"(?<![\w:.])[0-9A-Fa-f:.]{2,45}(?![\w:.])",
            start=r"(?<![\w:.])[0-9A-Fa-f:.]",
            run_chars=r"0-9A-Fa-f:.",
            max_length=45,
            window=50,
            validator=_ipv6_valid,
        ),
        RegexRecognizer(
            "AWS_ACCESS_KEY",
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
            start=r"(?<![A-Za-z0-9])A",
            run_chars=r"A-Za-z0-9",
            max_length=20,
            window=24,
        ),
        RegexRecognizer(
            "GITHUB_TOKEN",
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255})"
            r"(?![A-Za-z0-9_])",
            start=r"(?<![A-Za-z0-9_])g",
            run_chars=r"A-Za-z0-9_",
            max_length=266,
            window=270,
        ),
        RegexRecognizer(
            "SLACK_TOKEN",
            r"(?<![A-Za-z0-9\-])xox[abprs]-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])",
            start=r"(?<![A-Za-z0-9\-])x",
            run_chars=r"A-Za-z0-9\-",
            max_length=255,
            window=260,
        ),
        RegexRecognizer(
            "JWT",
            r"(?<![A-Za-z0-9_\-.])eyJ[A-Za-z0-9_\-]{2,2000}\.[A-Za-z0-9_\-]{2,4000}"
            r"\.[A-Za-z0-9_\-]{0,2000}(?![A-Za-z0-9_\-])",
            start=r"(?<![A-Za-z0-9_\-.])e",
            run_chars=r"A-Za-z0-9_\-.",
            max_length=8010,
            window=8020,
            validator=jwt_valid,
        ),
        PrivateKeyRecognizer(),
    ]


# --------------------------------------------------------------------------- merging


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Resolve overlaps greedily: longest first (ties: earliest, then type name)."""
    chosen: list[Span] = []
    for sp in sorted(spans, key=lambda x: (x.start - x.end, x.start, x.type)):
        if all(sp.end <= c.start or sp.start >= c.end for c in chosen):
            chosen.append(sp)
    chosen.sort()
    return chosen


_DEFAULT: list[StreamingRecognizer] | None = None


def shared_default_recognizers() -> list[StreamingRecognizer]:
    """`default_recognizers()`, built once per process (they are stateless)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = default_recognizers()
    return _DEFAULT


def find_all(text: str, recognizers: Sequence[Recognizer] | None = None) -> list[Span]:
    """All entities in ``text``, overlaps merged (longest wins), sorted by start."""
    recs: Sequence[Recognizer] = (
        shared_default_recognizers() if recognizers is None else recognizers
    )
    spans: list[Span] = []
    for r in recs:
        spans.extend(r.find(text))
    return merge_spans(spans)


# --------------------------------------------------------------------------- NER slot


@runtime_checkable
class NerBackend(Protocol):
    """Optional model-based recognizer for unstructured PII (names, addresses)."""

    def entity_types(self) -> Sequence[str]: ...

    def find(self, text: str) -> list[Span]: ...


_NER_MODULES = ("switchyard_ner",)


def load_ner_backend() -> NerBackend | None:
    """Return an installed NER backend, or None (the default: none is required).

    A backend is a module named in ``_NER_MODULES`` exposing ``load() -> NerBackend``.
    """
    for name in _NER_MODULES:
        try:
            module = import_module(name)
        except ImportError:
            continue
        loader = getattr(module, "load", None)
        if callable(loader):
            backend = loader()
            if isinstance(backend, NerBackend):
                return backend
    return None
