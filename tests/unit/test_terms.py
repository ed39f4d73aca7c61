"""Safety categories from term lists: whole words, any case, and the streaming invariant."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.safety.recognizers import shared_default_recognizers
from services.safety.scrubber import BlockedError, Policy, StreamScrubber, scrub
from services.safety.terms import TermListRecognizer

WEAPONS = TermListRecognizer("WEAPONS", ["pipe bomb", "nerve agent", "pipe"])
RECS = [*shared_default_recognizers(), WEAPONS]


def spans(text: str) -> list[tuple[int, int]]:
    return [(s.start, s.end) for s in WEAPONS.find(text)]


def test_whole_words_any_case_longest_phrase():
    text = "A Pipe Bomb, a pipeline, bagpipe, NERVE  AGENT and a pipe."
    found = [text[s:e] for s, e in spans(text)]
    assert found == ["Pipe Bomb", "NERVE  AGENT", "pipe"]


def test_phrase_words_across_line_breaks_but_bounded_gap():
    assert spans("pipe\nbomb") == [(0, 9)]
    assert [e - s for s, e in spans("pipe      bomb")] == [4]  # too far apart: just "pipe"


@pytest.mark.parametrize("term", ["", "  ", "-dash", "bomb!"])
def test_bad_terms_are_refused(term):
    with pytest.raises(ValueError):
        TermListRecognizer("X", [term])


def test_clean_text_streams_through_until_a_possible_term():
    sc = StreamScrubber(Policy(), RECS)
    # The last word is held while what follows could still make it an address ("nice @ …").
    assert sc.feed("the weather is nice ") == "the weather is "
    assert sc.feed("and the pi") == "nice and the "  # "pi" may begin "pipe"
    assert sc.feed("ano plays") == "piano "  # "plays" is held: it may begin a phone or more


def test_a_term_split_over_chunks_is_blocked_before_any_byte_leaves():
    sc = StreamScrubber(Policy(actions={"WEAPONS": "block"}), RECS)
    out = sc.feed("how to build a ner") + sc.feed("ve ag")
    assert "ner" not in out
    with pytest.raises(BlockedError, match="WEAPONS"):
        sc.feed("ent now")


WORDS = st.sampled_from(
    ["pipe", "Pipe", "bomb", "BOMB", "nerve", "agent", "pipeline", "nerves", "a", "x@y.io", "7"]
)
SEPS = st.sampled_from([" ", "  ", "\n", "     ", ",", "-", ""])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.tuples(WORDS, SEPS), max_size=14),
    cuts=st.lists(st.integers(0, 200), max_size=20),
)
def test_stream_equals_whole(words, cuts):
    text = "".join(w + s for w, s in words)
    policy = Policy(actions={"WEAPONS": "mask"})
    expected = scrub(text, policy, RECS).text
    sc = StreamScrubber(policy, RECS)
    out, prev = [], 0
    for c in [*sorted({min(c, len(text)) for c in cuts}), len(text)]:
        out.append(sc.feed(text[prev:c]))
        prev = c
    out.append(sc.finish())
    assert "".join(out) == expected


def test_terms_with_accents_or_another_script_match_in_any_case_and_disguise():
    from services.safety.recognizers import default_recognizers

    recs = [*default_recognizers(), TermListRecognizer("WEAPONS", ["bombe à clous", "нервный газ"])]
    policy = Policy(actions={"WEAPONS": "redact"})
    for text in ("une bombe à clous ici", "une bombe a clous ici", "это нервный газ",
                 "ЭТО НЕРВНЫЙ ГАЗ", "Нервный\u200b газ!"):  # fmt: skip
        got = scrub(text, policy, recs).text
        assert "[WEAPONS]" in got, text
        sc = StreamScrubber(policy, recs)
        out = "".join(sc.feed(text[i : i + 2]) for i in range(0, len(text), 2)) + sc.finish()
        assert out == got
