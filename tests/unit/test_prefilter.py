"""The Hyperscan prefilter (`services/safety/prefilter.py`) only ever skips a recognizer that
would have found nothing: for every built-in and every text, a scan or an evidence search it
rules out comes back empty, so whole-text scrubbing is the same with or without it."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.safety import prefilter
from services.safety.normalize import fold
from services.safety.recognizers import default_recognizers
from services.safety.scrubber import Policy, _view_spans, scrub
from tests.unit.test_scrubber import PII

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import safety_corpus

pytestmark = pytest.mark.skipif(prefilter.hyperscan is None, reason="hyperscan not installed")

RECS = default_recognizers()


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    prefilter.screen(RECS, "")  # starts compiling
    pf = prefilter._PLANS[tuple(map(id, RECS))][1].prefilter
    assert pf.ready.wait(60), "the prefilter did not compile"


def assert_sound(text: str) -> None:
    """Whatever the prefilter rules out finds nothing; and the result is the same."""
    view, _ = fold(text)
    runs = prefilter.screen(RECS, view)
    assert runs is not None
    scans, evidence = runs
    n = len(view)
    for r, scan, ev in zip(RECS, scans, evidence, strict=True):
        if not scan:
            found = [(s, e) for s, e, ok in r.scan(view, 0, n) if ok]
            assert not found, f"{r!r} ruled out, yet finds {found} in {view!r}"
        pattern = getattr(r, "evidence", None)
        if not ev and pattern is not None:
            m = pattern.search(view, 0, n)
            assert m is None, f"{r!r}'s evidence ruled out, yet matches {m} in {view!r}"


def corpus(seed: int) -> Iterator[str]:
    gen = safety_corpus.Generator(safety_corpus.load_faker(), seed)
    rnd = random.Random(seed)
    for _ in range(3):
        for t in safety_corpus.TYPES:
            doc = gen.doc(t).text
            yield doc
            for p in range(len(doc) - 60, len(doc) + 1, 3):  # cut anywhere near its end
                yield doc[:p]
            for how in safety_corpus.GENERIC_DISGUISES + safety_corpus.TYPE_DISGUISES.get(t, ()):
                yield safety_corpus.disguised_doc(gen, t, how).text
        yield gen.doc(None).text
        yield safety_corpus.disguised_lookalike(gen).text
    text, _ = gen.prose(4000, 300, 300, {t: 1.0 for t in safety_corpus.TYPES})
    yield text
    for _ in range(200):  # every prefix of the prose, at random cuts
        yield text[: rnd.randrange(len(text))]


def test_sound_on_the_safety_corpus() -> None:
    for text in corpus(7):
        assert_sound(text)


@pytest.mark.parametrize("entity_type", sorted(PII))
def test_sound_on_the_scrubber_cases_and_their_cuts(entity_type: str) -> None:
    for value in PII[entity_type]:
        for text in (value, f"call {value} now.", f"x {value}x", f"({value})"):
            for cut in range(len(text) + 1):
                assert_sound(text[:cut])


ENTITY_CHARS = "0123456789 -./()+:@xXeyJABCDEFabcdef_'\n\u00a0\u2013\uff10\u0660@"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=ENTITY_CHARS, max_size=80))
def test_sound_on_random_entity_like_text(text: str) -> None:
    assert_sound(text)


def test_rules_out_the_recognizers_with_nothing_in_plain_prose() -> None:
    text = "The garden by the river keeps its copper lanterns lit until the last train leaves."
    runs = prefilter.screen(RECS, text)
    assert runs is not None
    scans, evidence = runs
    kept = [repr(r) for r, scan in zip(RECS, scans, strict=True) if scan]
    assert kept == ["PrivateKeyRecognizer()"], kept  # (offers no pattern: always runs)
    searched = [
        repr(r)
        for r, ev in zip(RECS, evidence, strict=True)
        if ev and getattr(r, "evidence", None) is not None
    ]
    assert searched == ["PrivateKeyRecognizer()"], searched


def test_keeps_the_recognizer_of_each_entity() -> None:
    for entity_type, values in PII.items():
        for value in values:
            view, _ = fold(f"see {value} here")
            scans, _ = prefilter.screen(RECS, view) or ([], [])
            kept = {r.entity_type for r, scan in zip(RECS, scans, strict=True) if scan}
            assert entity_type in kept, (value, kept)


def test_scrub_is_the_same_as_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = Policy(default="redact")
    texts = list(corpus(11))
    with_it = [scrub(t, policy, RECS) for t in texts]
    monkeypatch.setattr("services.safety.scrubber.screen", lambda recs, view: None)
    without = [scrub(t, policy, RECS) for t in texts]
    assert [(r.text, r.findings) for r in with_it] == [(r.text, r.findings) for r in without]
    assert _view_spans("a@b.co", RECS)[2]  # (still finds entities without it)


def test_a_text_with_surrogates_is_screened() -> None:
    assert prefilter.screen(RECS, "broken \ud800 text 4111 1111 1111 1111") is not None


def test_remembers_a_bounded_number_of_recognizer_sets() -> None:
    for _ in range(prefilter._MAX_PLANS + 4):
        prefilter.screen(default_recognizers(), "text")
    assert len(prefilter._PLANS) <= prefilter._MAX_PLANS
    # One compiled database for all of them: the same patterns.
    assert len({id(plan.prefilter) for _, plan in prefilter._PLANS.values()}) == 1


def test_a_pattern_hyperscan_rejects_is_left_out_and_always_runs() -> None:
    pf = prefilter.Prefilter(["@", r"a\Kb", "[0-9]{4}"], background=False)  # (\K: not Hyperscan)
    assert pf.ready.is_set()
    assert pf.matching("mail me @ home") == {0, 1}
    assert pf.matching("year 2024") == {1, 2}
