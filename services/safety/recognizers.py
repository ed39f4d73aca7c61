"""Recognizers for structured PII and secrets.

Every recognizer is a bounded regular expression plus, where the entity carries a
checksum or a structure, a validator (Luhn for cards, mod-97 for IBANs, the SSA
ranges for SSNs, ``ipaddress`` for IPv6, JSON header for JWTs). Offsets are
character offsets into the scanned ``str``.

Streaming support (used by :mod:`services.safety.scrubber`): a
:class:`StreamingRecognizer` can also say, for a text known only up to ``n``,
the earliest position whose match attempt is *not settled* yet, i.e. could give
a different result once more text arrives (``pending_start``). A regex attempt
at ``s`` reads at most two characters before ``s`` (lookbehind; the scrubber keeps
more as context), the maximal run of characters from ``run_chars`` starting at
``s``, and one character after that run; and never more than ``window`` characters
from ``s``. So the attempt is settled once that run has ended inside the known
text, or ``s + window <= n``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import regex

__all__ = [
    "IBAN_LENGTHS",
    "SECRET_TYPES",
    "PrivateKeyRecognizer",
    "Recognizer",
    "RegexRecognizer",
    "Span",
    "StreamingRecognizer",
    "default_recognizers",
    "deobfuscate",
    "find_all",
    "iban_valid",
    "jwt_valid",
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
    """Luhn over 13-19 digits; 12 digits (short Maestro) only with a Maestro IIN: 50, 56-69, or
    the old 0604 range."""
    digits = re.sub(r"[ \-./]", "", value)
    if not luhn_valid(digits):
        return False
    if 13 <= len(digits) <= 19:
        return True
    return len(digits) == 12 and (
        digits[:2] == "50" or "56" <= digits[:2] <= "69" or digits[:4] == "0604"
    )


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
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
"""IBAN length by country, from the SWIFT IBAN registry."""


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


_PHONE_EXT = re.compile(r" ?x\d+$")
_DIGIT_GROUPS = re.compile(r"\d+")
_PL_MOBILE = frozenset("45 50 51 53 57 60 66 69 72 73 78 79 88".split())  # Polish mobile prefixes


def _phone_valid(value: str) -> bool:
    """A plausible phone number, judged by its digit groups (an "x123" extension aside).

    International (``+``): 8 to 15 digits (E.164). National with a trunk ``0`` (Europe, Japan,
    Australia, ``00``/``001`` dialling): 9 to 13 digits in at most five groups, or four pairs
    (Swedish ``08-60 42 30``); never the SSN layout ``3-2-4`` nor ZIP+4 ``5-4``. Otherwise only
    known layouts:
    North American ``3-3-4`` (optionally after ``1``), ``2-4-4`` (Japan, Brazil, Australia),
    Polish ``2-3-2-2`` and mobile ``3-3-3``, and eight-digit local ``4 4`` that is not a year
    range. A bare run of digits is never a phone number here (the regex needs a separator).
    """
    main = _PHONE_EXT.sub("", value)
    groups = _DIGIT_GROUPS.findall(main)
    digits = "".join(groups)
    n = len(digits)
    if main.lstrip("(").startswith("+"):
        return digits[0] != "0" and 8 <= n <= 15
    shape = tuple(len(g) for g in groups)
    if shape == (4, 4):
        return groups[0][:2] not in ("19", "20")  # not "1950-2000"
    if digits[0] == "0":
        if len(groups) > 5 or (shape == (3, 2, 4) and "-" in main) or shape == (5, 4):
            return False
        return 9 <= n <= 13 or shape == (2, 2, 2, 2)
    if shape in ((3, 3, 4), (2, 4, 4), (2, 3, 2, 2)):
        return True
    if shape == (1, 3, 3, 4):
        return digits[0] == "1"
    if shape == (3, 3, 3):
        return digits[:2] in _PL_MOBILE
    return False


def _always(_: str) -> bool:
    return True


CONTEXT_CHARS = 32
"""How much text before a candidate a recognizer's context check may read (the stream scrubber
keeps at least this much of what it emitted)."""

# A word or sign that makes the number after it an amount or a count, not a phone number.
_AMOUNT_CUE = re.compile(
    r"(?:[$€£¥₹]|\b(?:value|total|amount|sum|price|cost|balance|budget|revenue|salary|income|"
    r"population|count|usd|eur|gbp|pln|zl|chf)\b)[^.!?\n]{0,20}$",
    re.IGNORECASE,
)
_AMBIGUOUS_PHONE = re.compile(r"\d{3} \d{3} \d{3}|\d{4} \d{4}")


def _phone_context(before: str, value: str) -> bool:
    """The layouts numbers share with phone numbers ("575 130 161": a Polish mobile, or an
    amount written with space separators; "1234 5678") are not phones after an amount cue
    ("the total is", "$", "PLN"). Every other layout is judged by its digits alone."""
    return _AMBIGUOUS_PHONE.fullmatch(value) is None or _AMOUNT_CUE.search(before) is None


# --------------------------------------------------------------------------- recognizers


class RegexRecognizer:
    """A bounded regex plus validator; see the module docstring for the stream contract.

    ``start`` must match (at s, with its lookbehind) wherever ``pattern`` or ``evidence`` can
    match at s;
    ``run_chars`` is a character class containing every character ``pattern`` can consume,
    such that its lookaheads read at most one character past that run; ``window`` bounds
    how far past ``s`` an attempt can read.

    ``prefilter`` (see :mod:`services.safety.prefilter`) must match, on the folded view, wherever
    ``pattern`` finds a valid entity (by default ``pattern`` itself stands for it), read with
    Hyperscan's syntax outside lookarounds: ASCII classes and literals, as the built-ins use.
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
        evidence: str | None = None,
        context: Callable[[str, str], bool] | None = None,
        prefilter: str | None = None,
    ) -> None:
        self._type = entity_type
        self._flags = flags
        self._prefilter = prefilter
        # Judges a valid candidate by the text before it (at most CONTEXT_CHARS): False rejects.
        self._context = context
        # A tail of the text that is already this entity, cut off (see the scrubber: "end of
        # text"); it must end at the text's end, and be no longer than `window`.
        self.evidence = None if evidence is None else re.compile(rf"(?:{evidence})\Z", flags)
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

    def prefilter_patterns(self) -> tuple[str | None, str | None]:
        if self._flags:  # (flags Hyperscan would read differently: nothing offered)
            return None, None
        return (
            self._prefilter or self._re.pattern,
            None if self.evidence is None else self.evidence.pattern,
        )

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        for m in self._re.finditer(buf, lo, n):
            value = m.group()
            ok = len(value) <= self._max_length and self._validate(value)
            if ok and self._context is not None:
                s = m.start()
                ok = self._context(buf[max(0, s - CONTEXT_CHARS) : s], value)
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
# The body of a key block: base64 lines and RFC 1421 header lines ("Proc-Type: 4,ENCRYPTED"),
# blank lines; and the start of a line that may still become one, or the END line.
_PK_BODY = re.compile(r"(?:[ \t]*[A-Za-z0-9+/=]*[ \t]*\r?\n|[A-Za-z][A-Za-z0-9-]*:[^\n]*\n)*")
_PK_LINE = re.compile(r"[ \t]*[A-Za-z0-9+/=]*[ \t]*\r?|[A-Za-z][A-Za-z0-9-]*(?::[^\n]*)?")


_PK_BEGIN_LINE = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY")
_PK_HEADER_CUT = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-{0,4}")


@dataclass(frozen=True)
class _Opened:
    at: int

    def start(self) -> int:
        return self.at


class _OpenKey:
    """A private key's evidence (the scrubber's ``evidence.search``): a BEGIN line whose block
    the text ends inside of (no END line, its body not over)."""

    def __init__(self, recognizer: PrivateKeyRecognizer) -> None:
        self._r = recognizer

    def search(self, buf: str, pos: int = 0, n: int | None = None) -> _Opened | None:
        n = len(buf) if n is None else n
        while (m := _PK_BEGIN_LINE.search(buf, pos, n)) is not None:
            s = m.start()
            if _PK_HEADER.match(buf, s, n) is not None:
                if self._r._block_end(buf, s, n) < 0:
                    return _Opened(s)
            elif _PK_HEADER_CUT.fullmatch(buf, s, n) is not None:
                return _Opened(s)  # the text ends in its BEGIN line
            pos = s + 1
        return None


class PrivateKeyRecognizer:
    r"""PEM private keys: from the ``-----BEGIN ... PRIVATE KEY-----`` line through the matching
    END line, or, when no END line comes (a reply cut short, or a key written without one),
    through the last line of its body. Nothing of a key block leaves once its BEGIN line has.

    With an END line, the same matches as
    ``-----BEGIN (H)PRIVATE KEY-----[\s\S]{0,max}?-----END \1PRIVATE KEY-----`` (H: up to 40 of
    ``[A-Z0-9 ]``), but the END line is looked for with ``str.find``: a block still open in a
    stream costs a memchr-speed look per chunk, not a regex walk over the key. Without one, the
    block ends where a line that cannot be part of a key body (prose) begins; it is unsettled
    while its last line could still be one. A BEGIN line alone (cut off) is evidence enough
    (``evidence``).
    """

    window = 16 * 1024

    def __init__(self, max_length: int = 12 * 1024) -> None:
        self._max_length = max_length
        self.evidence = _OpenKey(self)

    @property
    def entity_type(self) -> str:
        return "PRIVATE_KEY"

    @property
    def max_length(self) -> int:
        return self._max_length + 200

    def find(self, text: str) -> list[Span]:
        return [Span(s, e, "PRIVATE_KEY") for s, e, ok in self.scan(text, 0, len(text)) if ok]

    def _block_end(self, buf: str, s: int, n: int) -> int:
        """End of the key block opening at ``s`` within ``buf[:n]``: its END line's end, else
        the end of its body when a line that cannot belong to it has begun; -1 while unsettled
        (or no header)."""
        header = _PK_HEADER.match(buf, s, n)
        if header is None:
            return -1
        end_line = f"-----END {header.group(1)}PRIVATE KEY-----"
        body = header.end()
        limit = min(n, body + self._max_length + len(end_line))
        e = buf.find(end_line, body, limit)
        if e >= 0:
            return e + len(end_line)
        cap = body + self._max_length  # as long as a key block can be
        run = _PK_BODY.match(buf, body, limit)
        end = run.end() if run is not None else body
        if end >= cap:
            return cap
        line = buf[end:n]
        if "\n" not in line and (_PK_LINE.fullmatch(line) or end_line.startswith(line)):
            # The line being written may still be the body's, or its END line: unsettled until
            # the block reaches the longest a key can be (then it ends there).
            return cap if n >= cap else -1
        return end

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        pos = lo
        while (s := buf.find(_PK_BEGIN, pos, n)) >= 0:
            e = self._block_end(buf, s, n)
            if e < 0:
                pos = s + 1
            else:
                out.append((s, e, True))
                pos = e
        return out

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        if buf.find("-", lo, n) < 0:
            return [], None
        return self.scan(buf, lo, n), self.pending_start(buf, lo, n)

    def _settled(self, buf: str, s: int, n: int) -> bool:
        if s + self.window <= n:
            return True
        if self._block_end(buf, s, n) >= 0:
            return True  # the block's end is known
        # Header impossible with what is known -> dead attempt.
        return s + 80 <= n and _PK_HEADER.match(buf, s, n) is None

    def pending_start(self, buf: str, lo: int, n: int) -> int | None:
        pos = max(lo, n - self.window + 1)
        while (s := buf.find(_PK_BEGIN, pos, n)) >= 0:
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
# An apostrophe joins local-part characters (o'brien@, d'angelo@), and a match never starts
# inside such a word; a quote around an address ('bob@x.io') stays outside the match. The
# local-part runs are possessive (what follows them, ' or @, is never one of their characters),
# so a plain word fails at once instead of backtracking through itself.
_EMAIL = (
    rf"(?<![{_LOCAL}])(?<![{_LOCAL}]')[{_LOCAL}]{{1,64}}+(?:'[{_LOCAL}]{{1,64}}+){{0,2}}"
    r"@(?:[A-Za-z0-9\-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)
_EMAIL_PLAIN = re.compile(_EMAIL)

# E-mail addresses written to dodge a pattern: "alice (at) example [dot] com",
# "alice @ example.com", "alice\n@example.com", "a l i c e @ e x a m p l e . c o m". (Fullwidth
# and small "@", zero-width characters and look-alike letters are already undone by the folded
# view.) Bare words
# ("alice at example dot com") are left out: "look at this dot product" reads the same.
_OB_AT = (
    r"(?<!\.)(?:[ \t]+@[ \t]+|[ \t]*\n[ \t]*@[ \t]*\n?[ \t]*|[ \t]*@[ \t]*\n[ \t]*"
    r"|[ \t]*[(\[{<][ \t]*(?i:at)[ \t]*[)\]}>][ \t]*)"
)  # spaces on both sides of the "@", a line break on either, or a spelled-out "at"
_OB_DOT = r"(?:\.|[ \t]*[(\[{<][ \t]*(?i:dot)[ \t]*[)\]}>][ \t]*)"
_OB_EMAIL = (
    rf"(?<![{_LOCAL}])(?<![{_LOCAL}]')[{_LOCAL}]{{1,64}}+(?:'[{_LOCAL}]{{1,64}}+){{0,2}}"
    rf"{_OB_AT}(?:[A-Za-z0-9\-]{{1,63}}{_OB_DOT}){{1,8}}[A-Za-z]{{2,24}}(?![A-Za-z0-9\-])"
    rf"|(?<![{_LOCAL}'])(?<!\s[{_LOCAL}'] )(?<!^[{_LOCAL}'] )[{_LOCAL}](?: [{_LOCAL}']){{0,63}}"
    r" @ [A-Za-z0-9\-]"
    r"(?: [A-Za-z0-9\-.]){3,252}(?![A-Za-z0-9\-])"
)
_OB_UNDO = re.compile(r"[(\[{<][ \t]*(?i:at)[ \t]*[)\]}>]|[(\[{<][ \t]*(?i:dot)[ \t]*[)\]}>]|\s+")


def deobfuscate(value: str) -> str:
    """A spelled-out or spaced address written plainly ("a (at) b (dot) c" -> "a@b.c")."""

    def one(m: re.Match[str]) -> str:
        t = m.group().lower()
        return "@" if "at" in t else "." if "dot" in t else ""

    return _OB_UNDO.sub(one, value)


class ObfuscatedEmailRecognizer:
    """E-mail addresses with their ``@`` or dots spelled out, spaced, or split across lines.

    Its matches can hold spaces, so its unsettled attempts are not a run of characters: an
    attempt at a local part's first character is unsettled while the text from there is still
    the beginning of some match (``regex``'s partial matching tells), which on prose is the last
    word at most, and only while nothing after it has ruled the forms out.
    """

    window = 740
    evidence = None

    def __init__(self) -> None:
        self._re = regex.compile(_OB_EMAIL)
        self._start = re.compile(rf"(?<![{_LOCAL}])(?<![{_LOCAL}]')[{_LOCAL}]")
        # Without an "@", a bracket or two single characters in a row ("a l"), no match can be
        # complete, and only the last word (with what may follow it before an "@") can still
        # begin one: the fast path on prose, equal to the general one there.
        self._at = re.compile(r"@|[(\[{<][ \t]*[aA][tT]")
        self._hint = re.compile(rf"[@(\[{{<]|(?<![{_LOCAL}'])[{_LOCAL}'] [{_LOCAL}']")
        self._tail = re.compile(
            rf"(?<![{_LOCAL}])(?<![{_LOCAL}]')[{_LOCAL}]{{1,64}}+"
            rf"(?:(?:'[{_LOCAL}]{{1,64}}+)?'|(?:'[{_LOCAL}]{{1,64}}+){{0,2}}"
            r"(?:(?<!\.)(?=[ \t\n])[ \t]*\n?[ \t]*)?)\Z"
            # a single character and a space: the first of a spaced-out address
            rf"|(?<![{_LOCAL}'])(?<!\s[{_LOCAL}'] )(?<!^[{_LOCAL}'] )[{_LOCAL}] \Z"
        )

    @property
    def entity_type(self) -> str:
        return "EMAIL"

    @property
    def max_length(self) -> int:
        return self.window

    def find(self, text: str) -> list[Span]:
        return [Span(s, e, "EMAIL") for s, e, ok in self.scan(text, 0, len(text)) if ok]

    def prefilter_patterns(self) -> tuple[str | None, str | None]:
        return self._at.pattern, None  # (what `scan` checks first)

    def scan(self, buf: str, lo: int, n: int) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        if self._at.search(buf, lo, n) is None:  # every match has an "@" or a spelled-out "at"
            return out
        for m in self._re.finditer(buf, lo, n):
            plain = deobfuscate(m.group())
            out.append(
                (m.start(), m.end(), plain != m.group() and bool(_EMAIL_PLAIN.fullmatch(plain)))
            )
        return out

    def pending_start(self, buf: str, lo: int, n: int) -> int | None:
        pos = max(lo, n - self.window + 1)
        if self._hint.search(buf, pos, n) is None:
            tail = self._tail.search(buf, pos, n)
            return None if tail is None else tail.start()
        while (m := self._start.search(buf, pos, n)) is not None:
            s = m.start()
            if self._re.fullmatch(buf, s, n, partial=True) is not None:
                return s
            pos = s + 1
        return None

    def analyze(self, buf: str, lo: int, n: int) -> tuple[list[tuple[int, int, bool]], int | None]:
        return self.scan(buf, lo, n), self.pending_start(buf, lo, n)

    def __repr__(self) -> str:
        return "ObfuscatedEmailRecognizer()"


# A whole run of digit groups (never a piece of one: not after or before "digit separator
# digit"): a first group ("+44", "(0114)", "020"), up to six more joined by one separator or a
# bracketed group ("+33 (0)2 35 55 54 98"), and an optional extension ("x492", " x124").
# `_phone_valid` decides whether the groups form a phone number.
_PHONE = (
    r"(?=[+(0-9])(?<![\w+\-./)])(?<!\d[ .\-/])"
    r"(?:\+\d{1,14}|\(\+?\d{1,5}\)|\d{1,5})"
    r"(?:[ .\-/]\d{1,11}|(?<=\))\d{1,11}|[ .\-]?\(\d{1,5}\)){0,6}"
    r"(?: ?x\d{1,6})?"
    r"(?!\w|[ .\-/]\d)"
)
# 13-19 digits plain or in groups of four (4-4-4-4-3 for 19), Amex 4-6-5 and Diners 4-6-4, and
# 12-digit Maestro; the groups joined by spaces, hyphens, dots or slashes, mixed, or not at all
# between some (on the folded view: non-breaking spaces and en dashes read as spaces and
# hyphens; a zero-width space between two groups is gone, and joins them); not
# inside a longer token (letters, digits or "-" around it). Luhn decides.
_CARD_SEP = r"[ \-./]"
_CARD = (
    rf"(?=\d)(?<![\w\-])(?<!\d{_CARD_SEP})"
    rf"(?:\d{{4}}{_CARD_SEP}?\d{{4}}{_CARD_SEP}?\d{{4}}(?:{_CARD_SEP}?\d{{1,4}}(?:{_CARD_SEP}?\d{{3}})?)?"
    rf"|\d{{4}}{_CARD_SEP}?\d{{6}}{_CARD_SEP}?\d{{4,5}}|\d{{12,19}})"
    r"(?!\w|-\w|[./]\d)"
)
# A card cut off: six digits in card grouping (a space or hyphen after the first four), eight
# with dots or slashes (so that a price or a date, "1234.56", "2024/12", is not one), or twelve
# in a row. Grouped, the first four must open a card number: a network's range (2221-2720, 3-6),
# so that a date ("2024-03", "1999 12") is not one.
_CARD_IIN = r"(?:[3-6]\d{3}|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720))"
_CARD_EVIDENCE = (
    rf"(?=\d)(?<![\w\-])(?<!\d{_CARD_SEP})"
    rf"(?:{_CARD_IIN}(?:[ \-]\d{{2}}|[./]\d{{4}})[\d \-./]{{0,15}}|\d{{12,18}})"
)


_COUNTRIES = "|".join(sorted(IBAN_LENGTHS))


def _iban_pattern() -> str:
    """IBANs of the known countries, each exactly as long as its country's (plain or in groups
    of four), so a word after it ("BIC", "Need") is never taken in."""
    by_length: dict[int, list[str]] = {}
    for country, length in IBAN_LENGTHS.items():
        by_length.setdefault(length, []).append(country)
    alternatives = []
    for length, countries in sorted(by_length.items()):
        groups, rest = divmod(length - 4, 4)
        bban = rf"(?: ?[A-Z0-9]{{4}}){{{groups}}}" + (rf" ?[A-Z0-9]{{{rest}}}" if rest else "")
        alternatives.append(rf"(?:{'|'.join(sorted(countries))})\d\d{bban}")
    return rf"(?=[A-Z]{{2}}\d\d)(?<![A-Z0-9])(?:{'|'.join(alternatives)})(?![A-Z0-9])"


def default_recognizers() -> list[StreamingRecognizer]:
    """The built-in recognizers, most specific first.

    Each pattern and start opens with a lookahead on its first character(s), redundant with what
    follows: ``re`` then dismisses most positions before it evaluates the lookbehinds (whole-text
    scans 1.5-3x faster).
    """
    return [
        RegexRecognizer(
            "EMAIL",
            _EMAIL,
            start=rf"(?=[{_LOCAL}])(?<![{_LOCAL}])[{_LOCAL}]",
            run_chars=rf"{_LOCAL}'@",
            max_length=254,
            window=740,
            # local@d: an address cut anywhere after the first character of its domain
            evidence=rf"(?=[{_LOCAL}])(?<![{_LOCAL}])(?<![{_LOCAL}]')[{_LOCAL}]{{1,64}}+(?:'[{_LOCAL}]{{1,64}}+){{0,2}}"
            r"@[A-Za-z0-9\-][A-Za-z0-9\-.]{0,252}",
        ),
        ObfuscatedEmailRecognizer(),
        RegexRecognizer(
            "PHONE",
            _PHONE,
            start=r"(?=[+(0-9])(?<![\w+\-./)])(?<!\d[ .\-/])[+(0-9]",
            run_chars=r"0-9 ().+/\-x",
            max_length=40,
            window=100,
            validator=_phone_valid,
            context=_phone_context,
            # Every layout `_phone_valid` accepts has 8 digits or more before any extension,
            # each next one at most 3 characters on (") (", "(", ")", a separator).
            prefilter=r"[0-9](?:[ .\-/()]{0,3}[0-9]){7}",
        ),
        RegexRecognizer(
            "CREDIT_CARD",
            _CARD,
            start=rf"(?=\d)(?<![\w\-])(?<!\d{_CARD_SEP})\d",
            run_chars=r"0-9 \-./",
            max_length=23,
            window=32,
            validator=_card_valid,
            evidence=_CARD_EVIDENCE,
        ),
        RegexRecognizer(
            "US_SSN",
            r"(?=\d)(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d]|-\d)",
            start=r"(?=\d)(?<![\d\-])\d",
            run_chars=r"0-9\-",
            max_length=11,
            window=16,
            validator=ssn_valid,
            evidence=r"(?=\d)(?<![\d\-])\d{3}-\d{2}-\d{0,3}",  # ddd-dd-
        ),
        RegexRecognizer(
            "IBAN",
            _iban_pattern(),
            start=r"(?=[A-Z])(?<![A-Z0-9])[A-Z]",
            run_chars=r"A-Z0-9 ",
            max_length=42,
            window=48,
            validator=iban_valid,
            # a known country, its check digits, and 8 characters of the account
            evidence=rf"(?=[A-Z]{{2}}\d\d)(?=[A-Z0-9 ]{{0,44}}\Z)(?<![A-Z0-9])(?:{_COUNTRIES})\d\d"
            r"(?: ?[A-Z0-9]){8,30}",
        ),
        RegexRecognizer(
            "IPV4",
            r"(?=\d)(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)",
            start=r"(?=\d)(?<![\d.])\d",
            run_chars=r"0-9.",
            max_length=15,
            window=20,
            validator=_ipv4_valid,
        ),
        RegexRecognizer(
            "IPV6",
            # Never ends on a ".": "fe80::1." at the end of a sentence is the address.
            r"(?=[0-9A-Fa-f:.])(?<![\w:.])[0-9A-Fa-f:.]{1,44}[0-9A-Fa-f:](?![\w:]|\.[\w:])",
            start=r"(?=[0-9A-Fa-f:.])(?<![\w:.])[0-9A-Fa-f:.]",
            run_chars=r"0-9A-Fa-f:.",
            max_length=45,
            window=50,
            validator=_ipv6_valid,
            prefilter=r":[0-9A-Fa-f.]*:",  # two colons at least (`_ipv6_valid`)
        ),
        RegexRecognizer(
            "AWS_ACCESS_KEY",
            r"(?=A)(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
            start=r"(?=A)(?<![A-Za-z0-9])A",
            run_chars=r"A-Za-z0-9",
            max_length=20,
            window=24,
            evidence=r"(?=A)(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{8,15}",
        ),
        RegexRecognizer(
            "GITHUB_TOKEN",
            r"(?=g)(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255})"
            r"(?![A-Za-z0-9_])",
            start=r"(?=g)(?<![A-Za-z0-9_])g",
            run_chars=r"A-Za-z0-9_",
            max_length=266,
            window=270,
            evidence=r"(?=g)(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{8,35}|github_pat_[A-Za-z0-9_]{8,254})",
        ),
        RegexRecognizer(
            "SLACK_TOKEN",
            # Bot/user/app/refresh tokens, app-level "xapp-1-…" and rotated "xoxe.xoxp-1-…".
            r"(?=x)(?<![A-Za-z0-9\-])(?:xox[abeprs]|xoxe\.xox[abprs]|xapp)-[A-Za-z0-9\-]{10,250}"
            r"(?![A-Za-z0-9\-])",
            start=r"(?=x)(?<![A-Za-z0-9\-])x",
            run_chars=r"A-Za-z0-9\-.",
            max_length=260,
            window=270,
            evidence=r"(?=x)(?<![A-Za-z0-9\-])(?:xox[abeprs]|xoxe\.xox[abprs]|xapp)-[A-Za-z0-9\-]{8,249}",
        ),
        RegexRecognizer(
            "JWT",
            r"(?=e)(?<![A-Za-z0-9_\-.])eyJ[A-Za-z0-9_\-]{2,2000}\.[A-Za-z0-9_\-]{2,4000}"
            r"\.[A-Za-z0-9_\-]{0,2000}(?![A-Za-z0-9_\-])",
            start=r"(?=e)(?<![A-Za-z0-9_\-.])e",
            run_chars=r"A-Za-z0-9_\-.",
            max_length=8010,
            window=8020,
            validator=jwt_valid,
            evidence=r"(?=e)(?=[A-Za-z0-9_\-.]{0,8000}\Z)(?<![A-Za-z0-9_\-.])eyJ[A-Za-z0-9_\-]{8,2000}"
            r"(?:\.[A-Za-z0-9_\-]{0,4000}){0,2}",
        ),
        PrivateKeyRecognizer(),
    ]


# --------------------------------------------------------------------------- merging


SECRET_TYPES = frozenset({"AWS_ACCESS_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "JWT", "PRIVATE_KEY"})
"""Credentials: they outrank other entities in `merge_spans`."""


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Resolve overlaps greedily: secrets first, then longest (ties: earliest, then type name).

    A secret is kept whole wherever it overlaps other entities: a token in a URL's user part
    (``https://ghp_…@github.com``) is a GITHUB_TOKEN even though an EMAIL pattern covers more.
    The order depends on each span alone, so spans on either side of a cut no candidate
    straddles are chosen the same way together or apart (the stream scrubber relies on this).
    """
    chosen: list[Span] = []
    for sp in sorted(spans, key=_merge_rank):
        if all(sp.end <= c.start or sp.start >= c.end for c in chosen):
            chosen.append(sp)
    chosen.sort()
    return chosen


def _merge_rank(sp: Span) -> tuple[bool, int, int, str]:
    return (sp.type not in SECRET_TYPES, sp.start - sp.end, sp.start, sp.type)


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
