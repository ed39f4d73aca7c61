"""Disguised and truncated entities: the folded view finds them, the stream never lets a byte
of them out, and streaming still equals whole-text scrubbing, for any chunking."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.safety.normalize import fold
from services.safety.recognizers import shared_default_recognizers
from services.safety.scrubber import BlockedError, Policy, StreamScrubber, scrub
from tests.unit.test_scrubber import PII, stream

FORMAT_CHARS = ["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff"]
CYRILLIC = dict(zip("aeopcxyAEKMOPTXB", "аеорсхуАЕКМОРТХВ", strict=True))
DIGIT_SCRIPTS = [0x0660, 0x06F0, 0x0966, 0xFF10]  # Arabic-Indic, Persian, Devanagari, fullwidth


def _fullwidth(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


@st.composite
def disguised(draw: st.DrawFn, value: str) -> str:
    """`value` with a random mix of the disguises a model (or a prompt injection) can use."""
    chars = list(value)
    out: list[str] = []
    script = draw(st.sampled_from(DIGIT_SCRIPTS))
    ways = draw(
        st.sets(st.sampled_from(["fullwidth", "digits", "cyrillic", "space", "dash", "at"]))
    )
    for i, ch in enumerate(chars):
        if "fullwidth" in ways and ch.isascii() and draw(st.integers(0, 3)) == 0:
            ch = _fullwidth(ch)
        elif "digits" in ways and ch.isdigit():
            ch = chr(script + int(ch))
        elif "cyrillic" in ways and ch in CYRILLIC and draw(st.booleans()):
            ch = CYRILLIC[ch]
        elif "space" in ways and ch == " ":
            ch = draw(st.sampled_from(["\u00a0", "\u2009", "\u202f", "\u3000"]))
        elif "dash" in ways and ch == "-" and "-----" not in value:
            ch = draw(st.sampled_from(["\u2010", "\u2011", "\u2013", "\u2212"]))
        elif "at" in ways and ch == "@":
            ch = draw(st.sampled_from(["\uff20", "\ufe6b"]))
        out.append(ch)
        if 0 < i < len(chars) - 1 and draw(st.integers(0, 5)) == 0:
            out.append(draw(st.sampled_from(FORMAT_CHARS)))  # invisible, inside the entity
    return "".join(out)


ENTITIES = [(t, v) for t, vs in PII.items() for v in vs]
CARD_DIGITS = ["4111111111111111", "5500000000000004", "4012888888881881"]


def cuts_for(data: st.DataObject, n: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, n), max_size=20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity=st.sampled_from(ENTITIES), data=st.data())
def test_a_disguised_entity_is_replaced_whole_in_stream_and_whole_text(
    entity: tuple[str, str], data: st.DataObject
) -> None:
    etype, value = entity
    text = "see " + data.draw(disguised(value)) + " now."
    expected = scrub(text, Policy())
    assert expected.text == f"see [{etype}] now.", (text, fold(text)[0])
    got, _ = stream(text, cuts_for(data, len(text)), Policy())
    assert got == expected.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(digits=st.sampled_from(CARD_DIGITS), data=st.data())
def test_cards_with_any_separators_and_digits(digits: str, data: st.DataObject) -> None:
    seps = [
        data.draw(st.sampled_from([" ", "-", ".", "/", "\u00a0", "\u200b", ""])) for _ in range(3)
    ]
    value = "".join(digits[i * 4 : i * 4 + 4] + (seps[i] if i < 3 else "") for i in range(4))
    text = "card " + data.draw(disguised(value)) + " ok"
    assert scrub(text, Policy()).text == "card [CREDIT_CARD] ok", (text, fold(text)[0])
    assert stream(text, cuts_for(data, len(text)), Policy())[0] == "card [CREDIT_CARD] ok"


def _evidence(etype: str) -> re.Pattern[str] | None:
    for r in shared_default_recognizers():
        if r.entity_type == etype:
            return getattr(r, "evidence", None)
    return None


TRUNCATABLE = [(t, v) for t, v in ENTITIES if _evidence(t) is not None]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity=st.sampled_from(TRUNCATABLE), data=st.data())
def test_a_turn_cut_inside_an_entity_lets_nothing_of_it_out_once_it_carries_evidence(
    entity: tuple[str, str], data: st.DataObject
) -> None:
    etype, value = entity
    whole = data.draw(disguised(value))
    cut = data.draw(st.integers(1, len(whole)))
    text = "see " + whole[:cut]  # the turn ends here (length, deadline, abort)
    expected = scrub(text, Policy())
    got, _ = stream(text, cuts_for(data, len(text)), Policy())
    assert got == expected.text
    evidence = _evidence(etype)
    assert evidence is not None
    if evidence.search(fold(text)[0], 4) is not None:
        # (a separator after a complete entity may follow it: "[EMAIL].", "[PHONE] ")
        m = re.match(r"see \[[A-Z_0-9]+\]", got)
        assert m and re.fullmatch(r"[\s.\-/]*", fold(got[m.end() :])[0]), (text, got)


@pytest.mark.parametrize(
    "text",
    [
        "mail alice@example.c",
        "card 4111 1111 1111 1",
        "card 4111-11",
        "card 378282246310",
        "ssn 123-45-",
        "key AKIA12345678",
        "iban DE89 3704 0044",
        "token ghp_A1b2A1b2A1",
        "jwt eyJhbGciOiJIUzI1",
    ],
)
def test_what_carries_evidence_when_the_turn_ends_is_scrubbed(text: str) -> None:
    head = text.split(" ")[0]
    assert scrub(text, Policy()).text.startswith(f"{head} [")
    assert stream(text, [len(text) // 2], Policy())[0] == scrub(text, Policy()).text


@pytest.mark.parametrize(
    "text",
    [
        "the total is 1234.56",
        "released on 2024/12",
        "version 1.2.3",
        "see alice@",  # no domain yet: not evidence
        "card 4111 1",
        "commit 3f2a9c1d",
        "at 10:30",
    ],
)
def test_what_cannot_be_an_entity_is_released_when_the_turn_ends(text: str) -> None:
    assert scrub(text, Policy()).text == text
    assert stream(text, [len(text) // 2], Policy())[0] == text


KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAqwerty+/==\nASDFGHJKL12345\n"


@pytest.mark.parametrize("cut", range(len("-----BEGIN RSA PRIVATE KEY"), len(KEY) + 1))
def test_a_key_block_never_leaks_past_its_begin_line(cut: int) -> None:
    policy = Policy(actions={"PRIVATE_KEY": "block"})
    text = "here: " + KEY[:cut]
    sc = StreamScrubber(policy)
    out = ""
    with pytest.raises(BlockedError):
        for i in range(0, len(text), 3):
            out += sc.feed(text[i : i + 3])
        out += sc.finish()
    assert out == "here: "[: len(out)] and "BEGIN" not in out


def test_a_key_block_without_an_end_line_is_redacted_through_its_body_and_prose_goes_on() -> None:
    text = "k: " + KEY + "That was the key."
    assert scrub(text, Policy()).text == "k: [PRIVATE_KEY]That was the key."
    assert stream(text, list(range(0, len(text), 2)), Policy())[0] == scrub(text, Policy()).text


def test_a_disguised_entity_hashes_to_the_same_pseudonym_as_the_plain_one() -> None:
    policy = Policy(actions={"EMAIL": "hash"}, tenant_key=b"t")
    plain = scrub("to jane.doe@example.com", policy).text
    assert scrub("to jane\u200b.doe\uff20exаmple\uff0ecom", policy).text == plain


def test_clean_non_latin_text_is_untouched_and_streams_promptly() -> None:
    text = "Привет, мир. 你好，世界。 مرحبا بالعالم ١٢٣ — ok"
    assert scrub(text, Policy()).text == text
    sc = StreamScrubber(Policy())
    out = sc.feed(text)
    assert text.startswith(out) and len(text) - len(out) <= len("ok")
    assert out + sc.finish() == text


OBFUSCATED = [
    "jane.doe (at) example (dot) com",
    "jane.doe [at] example [dot] co [dot] uk",
    "JANE{AT}EXAMPLE{DOT}COM",
    "jane.doe @ example.com",
    "jane.doe\n@\nexample.com",
    "jane.doe <at> mail.example.org",
    "j a n e @ e x a m p l e . c o m",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.sampled_from(OBFUSCATED), data=st.data())
def test_spelled_out_spaced_and_split_addresses_are_emails(value: str, data: st.DataObject) -> None:
    text = "write to " + data.draw(disguised(value)) + " today."
    assert scrub(text, Policy()).text == "write to [EMAIL] today.", (text, fold(text)[0])
    assert stream(text, cuts_for(data, len(text)), Policy())[0] == "write to [EMAIL] today."


@pytest.mark.parametrize(
    "text",
    [
        "look at this dot product (at) noon",
        "meet @ 5.30pm, ok?",
        "use the @ symbol. Then (dot) it",
        "I a m here",
        "x = a (at) b",
        "array[at] index",
    ],
)
def test_prose_that_only_resembles_a_spelled_out_address_is_left_alone(text: str) -> None:
    assert scrub(text, Policy()).text == text
    assert stream(text, list(range(1, len(text), 3)), Policy())[0] == text


def test_allow_listed_domains_and_values_pass_untouched_however_written() -> None:
    policy = Policy(
        allow_domains=frozenset({"acme.com"}),
        allow_values=frozenset({"4111111111111111"}),
        actions={"CREDIT_CARD": "block"},
    )
    text = (
        "Mail ops@acme.com, bob@eu.acme.com, carol＠acme．com, dave (at) acme (dot) com, "
        "eve@acme.com.evil.io; test card 4111-1111-1111-1111 or "
        "４１１１ １１１１ １１１１ １１１１."
    )
    got = scrub(text, policy)
    expected = (
        "Mail ops@acme.com, bob@eu.acme.com, carol＠acme．com, dave (at) acme (dot) com, "
        "[EMAIL]; test card 4111-1111-1111-1111 or ４１１１ １１１１ １１１１ １１１１."
    )
    assert got.text == expected and got.blocked is None
    assert got.findings == {"EMAIL": 1}  # allowed ones are not findings
    assert stream(text, list(range(0, len(text), 3)), policy)[0] == expected
    with pytest.raises(BlockedError):  # another card is still blocked
        sc = StreamScrubber(policy)
        sc.feed("card 5500 0000 0000 0004 ok")
        sc.finish()


CLEAN = [
    "def f(x):\n    return x[0] + y.z(1, 2)\n",
    "Total: $1,234.56 (incl. 5.5% tax), due 2024-03-15 at 10:30.",
    "Upgrade from v1.2.3 to 2.0.0-rc.1; see RFC 7231 and ISO 8601.",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "commit 3f2a9c1 merged; build #48213 passed in 12.7s.",
    "The ratio was 16:9 and 1920x1080 at 60 fps.",
    "Order ORD-2024-004211 shipped (tracking 1Z999AA10123456784).",
    "Meet at noon (at the usual place) — bring the [dot] matrix printer.",
    "Café crème, naïve façade: ½ price at ２ p.m.",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.sampled_from(CLEAN), data=st.data())
def test_clean_text_keeps_its_precision_in_any_chunking_and_at_any_cut(
    text: str, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(1, len(text)))
    for t in (text, text[:cut]):
        assert scrub(t, Policy()).text == t
        assert stream(t, cuts_for(data, len(t)), Policy())[0] == t


@pytest.mark.parametrize(("etype", "value"), TRUNCATABLE, ids=[v[:12] for _, v in TRUNCATABLE])
def test_every_cut_point_past_the_evidence_lets_nothing_out(etype: str, value: str) -> None:
    """Each minimum evidence (e-mail `x@y`, card six digits in grouping or twelve in a row, IBAN
    country + check digits + 8, SSN `ddd-dd-`, AWS `AKIA` + 8, a key's BEGIN line…), tested at
    every cut point of every sample, streamed in 3-character chunks."""
    evidence = _evidence(etype)
    assert evidence is not None
    for cut in range(1, len(value) + 1):
        text = "see " + value[:cut]
        got, _ = stream(text, list(range(4, len(text), 3)), Policy())
        assert got == scrub(text, Policy()).text
        if evidence.search(text, 4) is not None:
            assert got.startswith("see ["), (cut, got)


# -- found in review --------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_key_blocks_header_lines_and_crlf_never_end_it_early(newline: str) -> None:
    key = (
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0A1B\n"
        "\nMIIEowsecretbase64\n-----END RSA PRIVATE KEY-----\nDone."
    ).replace("\n", newline)
    whole = scrub(key, Policy()).text
    assert whole == f"[PRIVATE_KEY]{newline}Done."
    for cut in range(1, len(key)):
        assert stream(key, [cut], Policy())[0] == whole, cut


@pytest.mark.parametrize("text", ["mail bob@x.co\u2105", "call fe80::a\u2101 now"])
def test_a_character_that_folds_to_two_is_never_split_by_the_cut(text: str) -> None:
    whole = scrub(text, Policy()).text
    for cut in range(len(text) + 1):
        assert stream(text, [cut], Policy())[0] == whole, cut


def test_prose_that_mentions_a_begin_line_is_not_a_key() -> None:
    text = "A PEM file starts with -----BEGIN RSA PRIVATE KEY and then base64 lines; that is all."
    assert scrub(text, Policy()).text == text
    assert stream(text, list(range(0, len(text), 5)), Policy())[0] == text


def test_invisible_characters_after_the_text_are_not_held_forever() -> None:
    sc = StreamScrubber(Policy())
    assert sc.feed("ok. ") == "ok. "
    for _ in range(100):
        sc.feed("\u200b")
    assert sc.held_back == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111.", "card [CREDIT_CARD]."),
        ("mail alice@example.com.", "mail [EMAIL]."),
        ("ssn 123-45-6789-", "ssn [US_SSN]-"),
    ],
)
def test_a_text_ending_just_after_a_whole_entity_keeps_its_punctuation(
    text: str, expected: str
) -> None:
    assert scrub(text, Policy()).text == expected
    for cut in range(len(text) + 1):
        assert stream(text, [cut], Policy())[0] == expected
