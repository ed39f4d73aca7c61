"""Policy-driven scrubbing of PII and secrets, whole-text and streaming.

Actions per entity type: ``redact`` -> ``[EMAIL]``; ``mask`` -> ``'*' * len``;
``hash`` -> ``[EMAIL:<first 10 hex of HMAC-SHA256(tenant_key, value)>]`` (stable per
tenant); ``block`` -> the whole text is refused (:func:`scrub` reports ``blocked``,
:class:`StreamScrubber` raises :class:`BlockedError`); ``allow`` leaves it as is.

Streaming invariant
-------------------
For any cut of a text ``T`` into chunks ``c1..ck``::

    feed(c1) + ... + feed(ck) + finish() == scrub(T, policy).text

(when nothing is blocked), and no character of a detected entity is ever emitted
unscrubbed. How: the scrubber keeps the not-yet-emitted suffix of ``T`` (plus a few
characters of already-emitted context for lookbehinds). On each feed it asks every
recognizer for the earliest position whose match attempt is not settled yet (the
attempt could change with more text: a candidate run touching the buffer end, or
within the recognizer's ``window`` of it). Everything before the minimum of these is
final, except that a final raw match straddling the cut moves the cut back to that
match's start. Since no raw candidate of any recognizer straddles the cut, regex
scanning restarted at the cut finds exactly the matches the whole-text scan finds
after it, and overlap merging never crosses it; so scrubbing the prefix now and the
rest later equals scrubbing the whole. Held-back text is bounded by the largest
recognizer window; on clean prose usually only the last word is held.

Recognizers read a folded view of the text (:mod:`services.safety.normalize`: disguises such as
fullwidth ``＠``, zero-width characters or Cyrillic look-alikes undone), one view character per
original character or fewer; spans over the view map back onto the original characters, so the
invariant holds in view coordinates and what is emitted is the original text with every
character of an entity replaced.

End of text (a turn's Final, whatever ended it: length, deadline, abort): what is still held
back is judged as what it already is. A tail that carries an entity type's evidence (each
recognizer's ``evidence`` pattern: ``local@d`` for an e-mail, six digits in card grouping, a
private key's BEGIN line, …) is an entity of that type to the end of the text, with that
type's action; anything else held back is released. Whole-text :func:`scrub` judges the end of
its text the same way, so the invariant holds there too.

A drain first asks only the recognizer that set the cut last time (the "holder"): if
its attempt at the first held-back character is still unsettled, the cut would be the
same again and nothing can go out, so no other recognizer is asked. That is the usual
case mid-word, and for every chunk while a long entity (a PEM block, a JWT) is open.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.safety.normalize import fold
from services.safety.prefilter import screen
from services.safety.recognizers import (
    CONTEXT_CHARS,
    Span,
    StreamingRecognizer,
    deobfuscate,
    merge_spans,
    shared_default_recognizers,
)

__all__ = [
    "Action",
    "BlockedError",
    "Policy",
    "ScrubResult",
    "StreamScrubber",
    "entities",
    "scrub",
]

Action = Literal["redact", "mask", "hash", "block", "allow"]

# Characters of emitted text kept for lookbehinds (ours read 2) and context checks.
_CONTEXT = CONTEXT_CHARS + 8


@dataclass(frozen=True)
class Policy:
    """Action per entity type; types not listed get ``default``. Allow-listed entities (a
    company's own e-mail domains, its test card numbers) pass untouched whatever their type's
    action, and are not findings."""

    actions: Mapping[str, Action] = field(default_factory=dict)
    default: Action = "redact"
    tenant_key: bytes = field(default=b"", repr=False)  # never in logs
    # E-mail domains (an address there or at a subdomain) and exact values (compared as
    # `allow_key` says: case and separators aside), both as written in the folded view.
    allow_domains: frozenset[str] = frozenset()
    allow_values: frozenset[str] = frozenset()

    def action(self, entity_type: str) -> Action:
        return self.actions.get(entity_type, self.default)

    def allows(self, entity_type: str, view_value: str) -> bool:
        """Whether this entity (its text in the folded view) is allow-listed."""
        if not (self.allow_domains or self.allow_values):
            return False
        if allow_key(view_value) in self.allow_values:
            return True
        if entity_type == "EMAIL" and self.allow_domains:
            domain = deobfuscate(view_value).rpartition("@")[2].lower()
            return any(domain == d or domain.endswith("." + d) for d in self.allow_domains)
        return False


_SEPARATORS = re.compile(r"[\s\-./]")


def allow_key(value: str) -> str:
    """How allow-listed values compare: lower case, without spaces, dashes, dots or slashes
    ("4111 1111 1111 1111" and "4111-1111-1111-1111" are one card)."""
    return _SEPARATORS.sub("", value).lower()


@dataclass(frozen=True)
class ScrubResult:
    text: str
    findings: Counter[str]
    blocked: str | None = None


class BlockedError(Exception):
    """Raised by the stream scrubber when an entity whose action is ``block`` appears.
    ``text``: the (scrubbed) text before it that had not gone out yet: it still goes, so what
    a client receives before a block does not depend on how the stream was chunked."""

    def __init__(self, entity_type: str, text: str = "") -> None:
        super().__init__(f"blocked: {entity_type}")
        self.entity_type = entity_type
        self.text = text


def _replacement(value: str, key: str, entity_type: str, policy: Policy) -> str:
    """What replaces an entity: ``value`` is its original text, ``key`` its folded view (the
    hash pseudonym is the same however the entity was disguised)."""
    action = policy.action(entity_type)
    if action == "allow":
        return value
    if action == "mask":
        return "*" * len(value)
    if action == "hash":
        digest = hmac.new(policy.tenant_key, key.encode(), hashlib.sha256).hexdigest()
        return f"[{entity_type}:{digest[:10]}]"
    return f"[{entity_type}]"  # redact, and block (never leak the value)


def _apply(
    text: str,
    view: str,
    origin: list[int] | None,
    lo: int,
    hi: int,
    spans: Sequence[Span],
    policy: Policy,
    findings: Counter[str],
) -> str:
    """Scrub ``text[lo:hi]`` given merged, sorted spans over ``view`` (mapped back to the
    original characters through ``origin``; ``None``: the view is the text)."""
    parts: list[str] = []
    pos = lo
    for sp in spans:
        if origin is None:
            start, end = sp.start, sp.end
        else:  # (an entity that runs to the end of the view takes what is invisible after it)
            start = origin[sp.start]
            end = hi if sp.end == len(view) and hi == len(text) else origin[sp.end - 1] + 1
        parts.append(text[pos:start])
        key = view[sp.start : sp.end]
        if policy.allows(sp.type, key):
            parts.append(text[start:end])
        else:
            parts.append(_replacement(text[start:end], key, sp.type, policy))
            findings[sp.type] += 1
        pos = end
    parts.append(text[pos:hi])
    return "".join(parts)


def _first_blocked(spans: Sequence[Span], policy: Policy, view: str) -> str | None:
    sp = _first_blocked_span(spans, policy, view)
    return sp.type if sp is not None else None


def _first_blocked_span(spans: Sequence[Span], policy: Policy, view: str) -> Span | None:
    for sp in spans:
        if policy.action(sp.type) == "block" and not policy.allows(
            sp.type, view[sp.start : sp.end]
        ):
            return sp
    return None


def _spans(
    recognizers: Sequence[StreamingRecognizer],
    buf: str,
    lo: int,
    hi: int,
    runs: Sequence[bool] | None = None,
) -> list[Span]:
    """Every recognizer's entities in ``buf[lo:hi]`` (those `runs` rules out skipped)."""
    spans: list[Span] = []
    for i, r in enumerate(recognizers):
        if runs is None or runs[i]:
            spans.extend(Span(s, e, r.entity_type) for s, e, ok in r.scan(buf, lo, hi) if ok)
    return merge_spans(spans)


_ENDING = re.compile(r"[\s.,;:!?)\]'\"\-/]*")


def _truncated(
    recognizers: Sequence[StreamingRecognizer],
    view: str,
    lo: int,
    n: int,
    complete: Sequence[Span],
    runs: Sequence[bool] | None = None,
) -> list[Span]:
    """The entity the text ends in the middle of, judged by what it already is: the earliest
    tail from ``lo`` that carries a type's evidence (see the module docstring), unless an entity
    of that type found whole starts there ("4111 1111 1111 1111." ends with a full stop, not
    inside a card). Evidence that `runs` rules out is not looked for."""
    whole = {(sp.start, sp.type): sp.end for sp in complete}
    best: Span | None = None
    for i, r in enumerate(recognizers):
        evidence = getattr(r, "evidence", None)
        if evidence is None or (runs is not None and not runs[i]):
            continue
        # Evidence is shorter than the recognizer's window: an attempt the stream settled
        # (s + window <= n) is never searched here.
        m = evidence.search(view, max(lo, n - getattr(r, "window", n) + 1), n)
        if m is None:
            continue
        end = whole.get((m.start(), r.entity_type))
        if end is not None and _ENDING.fullmatch(view, end, n) is not None:
            continue  # a whole entity, then only punctuation: the text ended after it
        if best is None or m.start() < best.start:
            best = Span(m.start(), n, r.entity_type)
    return [] if best is None else [best]


def _view_spans(
    text: str, recs: Sequence[StreamingRecognizer]
) -> tuple[str, list[int] | None, list[Span]]:
    """The folded view of a whole text, its origin map and its entities over the view (the
    end of the text judged as the end of a turn: an entity cut off there counts)."""
    view, origin = fold(text)
    n = len(view)
    runs = screen(recs, view)  # one pass ruling out most recognizers (see prefilter)
    scans, evidence = (None, None) if runs is None else runs
    spans = _spans(recs, view, 0, n, scans)
    return view, origin, merge_spans([*spans, *_truncated(recs, view, 0, n, spans, evidence)])


def entities(text: str, recognizers: Sequence[StreamingRecognizer] | None = None) -> list[Span]:
    """The entities :func:`scrub` replaces in ``text``, as spans of the original text (over
    every character of each, the invisible ones inside it included)."""
    recs = shared_default_recognizers() if recognizers is None else recognizers
    view, origin, spans = _view_spans(text, recs)
    if origin is None:
        return spans
    out = []
    for sp in spans:
        end = len(text) if sp.end == len(view) else origin[sp.end - 1] + 1
        out.append(Span(origin[sp.start], end, sp.type))
    return out


def scrub(
    text: str, policy: Policy, recognizers: Sequence[StreamingRecognizer] | None = None
) -> ScrubResult:
    """Scrub a whole text. If a ``block`` entity is present, ``blocked`` names the first."""
    recs = shared_default_recognizers() if recognizers is None else recognizers
    view, origin, spans = _view_spans(text, recs)
    findings: Counter[str] = Counter()
    out = _apply(text, view, origin, 0, len(text), spans, policy, findings)
    return ScrubResult(out, findings, _first_blocked(spans, policy, view))


class StreamScrubber:
    """Incremental :func:`scrub`; see the module docstring for the invariant."""

    def __init__(
        self, policy: Policy, recognizers: Sequence[StreamingRecognizer] | None = None
    ) -> None:
        self.policy = policy
        self._recs: Sequence[StreamingRecognizer] = (
            shared_default_recognizers() if recognizers is None else recognizers
        )
        self._buf = ""  # context + pending text, as received
        self._lo = 0  # start of pending text in _buf
        self._view = ""  # the folded view of _buf
        self._vlo = 0  # start of pending text in _view
        # For each character of _view, its index in _buf; None while the view is _buf itself
        # (nothing but ASCII since the last drain: the usual case, at no cost).
        self._origin: list[int] | None = None
        # The recognizer whose unsettled attempt at _vlo held the rest back at the last drain.
        self._holder: StreamingRecognizer | None = None
        self.findings: Counter[str] = Counter()
        self.blocked: str | None = None
        self._finished = False

    @property
    def held_back(self) -> int:
        """Characters received but not yet emitted."""
        return len(self._buf) - self._lo

    def feed(self, chunk: str) -> str:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self.blocked is not None:
            raise BlockedError(self.blocked)
        if not chunk:
            return ""
        folded, origin = fold(chunk)
        if origin is not None or self._origin is not None:
            if self._origin is None:
                self._origin = list(range(len(self._buf)))
            base = len(self._buf)
            self._origin.extend(
                range(base, base + len(chunk)) if origin is None else [base + i for i in origin]
            )
        self._buf += chunk
        self._view += folded
        return self._drain(final=False)

    def finish(self) -> str:
        if self.blocked is not None:
            raise BlockedError(self.blocked)
        out = self._drain(final=True)
        self._finished = True
        return out

    def _drain(self, *, final: bool) -> str:
        view, vlo, n = self._view, self._vlo, len(self._view)
        holder = self._holder
        if not final and holder is not None and holder.pending_start(view, vlo, n) == vlo:
            # What held the text back last time still holds it from its first character, so the
            # cut below would be `vlo` again: nothing can go out, no need to ask the others.
            return ""
        raw: list[tuple[int, int, bool, str]] = []
        cut = n
        holder = None
        for r in self._recs:
            found, pending = r.analyze(view, vlo, n)
            if found:
                t = r.entity_type
                raw.extend((s, e, ok, t) for s, e, ok in found)
            if pending is not None and pending < cut:
                cut = pending
                holder = r
        if final:
            cut, holder = n, None
        else:
            # Move the cut back before any (final) raw candidate straddling it, and before an
            # original character whose folded characters it would split ("℅" is "c/o").
            origin = self._origin
            moved = cut > vlo
            while moved:
                moved = False
                for s, e, _, _ in raw:
                    if s < cut < e:
                        cut = s
                        moved = True
                        holder = None
                if origin is not None and vlo < cut < n and origin[cut - 1] == origin[cut]:
                    while cut > vlo and origin[cut - 1] == origin[cut]:
                        cut -= 1
                    moved = True
                    holder = None
        self._holder = holder
        if cut == vlo and not final and not (cut == n and len(self._buf) > self._lo):
            return ""  # (characters that fold to nothing after the view's end still go out)
        spans: list[Span] = []
        if raw:
            merged = merge_spans([Span(s, e, t) for s, e, ok, t in raw if ok and s < cut])
            spans = [sp for sp in merged if sp.end <= cut]
        if final:  # the end of the turn: an entity cut off here is judged by what it already is
            # (one that began before the pending text cannot be: its recognizer held it back)
            spans = merge_spans([*spans, *_truncated(self._recs, view, vlo, n, spans)])
        buf, origin = self._buf, self._origin
        blocked = _first_blocked_span(spans, self.policy, view)
        if blocked is not None:
            self.blocked = blocked.type
            self.findings[blocked.type] += 1
            # What came before the blocked entity still goes out, scrubbed.
            before = [sp for sp in spans if sp.end <= blocked.start]
            ostart = blocked.start if origin is None else origin[blocked.start]
            text = (
                _apply(buf, view, origin, self._lo, ostart, before, self.policy, self.findings)
                if before
                else buf[self._lo : ostart]
            )
            raise BlockedError(blocked.type, text)
        # The original text up to the cut: to the first pending view character's origin (or the
        # end of what arrived, invisible characters after the view's end included).
        ocut = len(buf) if cut == n else (cut if origin is None else origin[cut])
        out = (
            _apply(buf, view, origin, self._lo, ocut, spans, self.policy, self.findings)
            if spans
            else buf[self._lo : ocut]
        )
        vkeep = max(0, cut - _CONTEXT)
        okeep = vkeep if origin is None else (origin[vkeep] if vkeep < n else ocut)
        okeep = min(okeep, ocut)
        self._buf = buf[okeep:]
        self._lo = ocut - okeep
        self._view = view[vkeep:]
        self._vlo = cut - vkeep
        if origin is not None:
            rest = [o - okeep for o in origin[vkeep:]]
            # Back to no map once the kept text is plain again (view == text).
            plain = self._view == self._buf and all(o == i for i, o in enumerate(rest))
            self._origin = None if plain else rest
        return out
