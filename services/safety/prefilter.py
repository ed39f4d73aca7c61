"""One pass over a whole text that rules out the recognizers with nothing to find in it.

Whole-text scrubbing (the router's prompt policy, `scrub`, `entities`) otherwise runs every
recognizer's pattern, and its end-of-text evidence, over the whole text with Python's `re`: a
dozen scans, ~0.14 ms for a 64-word prompt and ~1.1 ms for 700 words on the development
machine, nearly all of them finding nothing. Hyperscan (Intel's multi-pattern regex engine)
compiles every opted-in pattern into one database in prefilter mode (`HS_FLAG_PREFILTER`: what
it cannot run exactly, lookarounds and possessive repeats among them, is relaxed, so each
compiled pattern matches a superset of the original's matches) and scans the text once, a few
microseconds: a recognizer none of whose patterns match there is skipped, its scan could not
have found anything. Those that remain run exactly as before, so the result is the same with
or without this pass; it only saves time.

That holds when a pattern means the same to Hyperscan as to `re` outside its lookarounds,
which a recognizer vouches for by offering its patterns (`prefilter_patterns`). On the folded
view (`normalize.fold`) the built-in ones do: their bodies use ASCII classes and literals
(every decimal digit is an ASCII digit there, every space a " " or a newline), which Hyperscan
reads as `re` does on str. Recognizers that offer nothing (custom term lists, the PEM block
scanner) always run.

The database compiles in a background thread (about a second for the built-ins; Hyperscan
releases the GIL meanwhile), once per process and set of patterns; until it is ready, and
where Hyperscan is not installed (it is an x86-64 library), every recognizer runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Prefilter", "prefilter_for", "screen", "warm"]

try:
    import hyperscan
except ImportError:  # pragma: no cover - hyperscan ships x86-64 wheels only
    hyperscan = None  # type: ignore[assignment]


class Prefilter:
    """A compiled set of patterns; `matching(view)` names those with a match in `view`."""

    def __init__(self, patterns: Sequence[str], *, background: bool = True) -> None:
        self.patterns = tuple(patterns)
        self._db: Any = None
        self._unfiltered: frozenset[int] = frozenset()
        self._local = threading.local()  # a Hyperscan scratch per thread
        self.ready = threading.Event()
        if hyperscan is None or not self.patterns:
            return
        if background:
            threading.Thread(target=self._compile, name="safety-prefilter", daemon=True).start()
        else:
            self._compile()

    def _compile(self) -> None:
        assert hyperscan is not None
        flags = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH
        flags |= hyperscan.HS_FLAG_ALLOWEMPTY
        ids = list(range(len(self.patterns)))

        def compiled(which: list[int]) -> Any:
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            db.compile(
                expressions=[self.patterns[i].encode() for i in which],
                ids=which,
                elements=len(which),
                flags=flags,
            )
            return db

        usable = ids
        try:
            db = compiled(usable)
        except hyperscan.error:  # a pattern Hyperscan rejects is left out: it always runs
            usable = []
            for i in ids:
                try:
                    compiled([i])
                    usable.append(i)
                except hyperscan.error as e:
                    log.warning("prefilter: pattern %d left out (%s)", i, e)
            if not usable:
                return
            db = compiled(usable)
        self._unfiltered = frozenset(ids) - frozenset(usable)
        self._db = db
        self.ready.set()

    def matching(self, view: str) -> set[int] | None:
        """Indices of the patterns with a match in `view` (a superset: see the module
        docstring), or None when the database is not ready."""
        db = self._db
        if db is None:
            return None
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(db)
        hits: set[int] = set(self._unfiltered)
        # Non-ASCII characters become bytes >= 0x80 that no pattern's ASCII classes match;
        # surrogates (from JSON escapes) pass through as such.
        db.scan(
            view.encode("utf-8", "surrogatepass"),
            match_event_handler=_on_match,
            context=hits,
            scratch=scratch,
        )
        return hits


def _on_match(pattern: int, _start: int, _end: int, _flags: int, hits: set[int]) -> None:
    hits.add(pattern)


_CACHE: dict[tuple[str, ...], Prefilter] = {}
_CACHE_LOCK = threading.Lock()


def prefilter_for(patterns: Sequence[str]) -> Prefilter:
    """The process's Prefilter for these patterns (compiled once, in the background)."""
    key = tuple(patterns)
    with _CACHE_LOCK:
        pf = _CACHE.get(key)
        if pf is None:
            pf = _CACHE[key] = Prefilter(key)
        return pf


class _Plan:
    """Which pattern of the prefilter stands for each recognizer's scan and evidence: what its
    `prefilter_patterns()` offers (a pattern matching wherever its `scan` can find an entity,
    one wherever its `evidence` can match; None for a part not offered, which always runs)."""

    def __init__(self, recognizers: Sequence[object]) -> None:
        patterns: list[str] = []
        index: dict[str, int] = {}
        self.scan: list[int | None] = []
        self.evidence: list[int | None] = []
        for r in recognizers:
            offered = getattr(r, "prefilter_patterns", None)
            scan, evidence = offered() if offered is not None else (None, None)
            for part, out in ((scan, self.scan), (evidence, self.evidence)):
                if part is None:
                    out.append(None)
                    continue
                if part not in index:
                    index[part] = len(patterns)
                    patterns.append(part)
                out.append(index[part])
        self.prefilter = prefilter_for(patterns)


# Keyed by the recognizers' identities; each entry holds them, so an id is never reused for
# another while its plan is here.
_PLANS: dict[tuple[int, ...], tuple[Sequence[object], _Plan]] = {}


_MAX_PLANS = 16  # sets of recognizers remembered (a reloaded config brings a new one)


def _plan(recognizers: Sequence[object]) -> _Plan:
    key = tuple(map(id, recognizers))
    entry = _PLANS.get(key)
    if entry is None:
        plan = _Plan(recognizers)
        with _CACHE_LOCK:  # (long prompts are screened in worker threads too)
            while len(_PLANS) >= _MAX_PLANS:
                del _PLANS[next(iter(_PLANS))]  # the oldest
            entry = _PLANS.setdefault(key, (tuple(recognizers), plan))
    return entry[1]


def warm(recognizers: Sequence[object]) -> Prefilter:
    """Start compiling the recognizers' prefilter now (a service's start), not at first use."""
    return _plan(recognizers).prefilter


def screen(recognizers: Sequence[object], view: str) -> tuple[list[bool], list[bool]] | None:
    """For each recognizer, whether its scan and its evidence may find something in `view`;
    None when nothing can be ruled out (no prefilter yet): run them all. The first call for a
    set of recognizers starts compiling their prefilter (see `warm`)."""
    plan = _plan(recognizers)
    hits = plan.prefilter.matching(view)
    if hits is None:
        return None
    return (
        [i is None or i in hits for i in plan.scan],
        [i is None or i in hits for i in plan.evidence],
    )
