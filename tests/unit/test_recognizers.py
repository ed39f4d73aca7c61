"""Recognizers: checksums and structure are validated, not just pattern-matched."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.safety.recognizers import (
    Recognizer,
    Span,
    StreamingRecognizer,
    default_recognizers,
    find_all,
    iban_valid,
    jwt_valid,
    luhn_valid,
    merge_spans,
    ssn_valid,
)


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


JWT = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64({"sub": "42"}) + ".c2lnbmF0dXJlX3g"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnz\n"
    "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----"
)


def types(text: str) -> list[tuple[str, str]]:
    return [(sp.type, text[sp.start : sp.end]) for sp in find_all(text)]


def only(text: str, value: str, etype: str) -> None:
    assert types(f"see {text} now") == [(etype, value)]


@pytest.mark.parametrize(
    ("value", "etype"),
    [
        ("jane.doe+tag@mail.example.co.uk", "EMAIL"),
        ("+44 20 7946 0958", "PHONE"),
        ("+1 415-555-2671", "PHONE"),
        ("+49 30 12345678", "PHONE"),
        ("(555) 123-4567", "PHONE"),
        ("555-123-4567", "PHONE"),
        ("555.123.4567", "PHONE"),
        ("020 7946 0958", "PHONE"),
        ("030 12345678", "PHONE"),
        ("0151/2345 6789", "PHONE"),
        ("4111 1111 1111 1111", "CREDIT_CARD"),
        ("4111-1111-1111-1111", "CREDIT_CARD"),
        ("5500000000000004", "CREDIT_CARD"),
        ("3782 822463 10005", "CREDIT_CARD"),
        ("123-45-6789", "US_SSN"),
        ("DE89 3704 0044 0532 0130 00", "IBAN"),
        ("GB82WEST12345698765432", "IBAN"),
        ("192.168.0.1", "IPV4"),
        ("255.255.255.255", "IPV4"),
        ("2001:db8::8a2e:370:7334", "IPV6"),
        ("fe80::1", "IPV6"),
        ("AKIAIOSFODNN7EXAMPLE", "AWS_ACCESS_KEY"),
        ("ASIA1234567890ABCDEF", "AWS_ACCESS_KEY"),
        ("ghp_" + "A1b2" * 9, "GITHUB_TOKEN"),
        ("github_pat_" + "x" * 22 + "_" + "y" * 59, "GITHUB_TOKEN"),
        ("xoxb-123456789012-abcdefABCDEF", "SLACK_TOKEN"),
        (JWT, "JWT"),
        (PEM, "PRIVATE_KEY"),
        # apostrophes in the local part
        ("edelmira.d'angelo@gmail.com", "EMAIL"),
        ("o'neill@example.ie", "EMAIL"),
        # extensions, NANP with 1/001, two-digit and bracketed area codes, European layouts
        ("339-880-2080x492", "PHONE"),
        ("+1-921-899-2452x979", "PHONE"),
        ("(235) 337-4068 x124", "PHONE"),
        ("1-605-640-1161", "PHONE"),
        ("1 (635) 163-8141", "PHONE"),
        ("001-680-730-4395", "PHONE"),
        ("06-8914-7693", "PHONE"),
        ("(03)-2666-1570", "PHONE"),
        ("(07).6548.3039", "PHONE"),
        ("04 89 56 86 92", "PHONE"),
        ("+33 (0)2 35 55 54 98", "PHONE"),
        ("+44(0)121 496 0000", "PHONE"),
        ("(0114) 496 0163", "PHONE"),
        ("(07786) 751252", "PHONE"),
        ("(050)-5353843", "PHONE"),
        ("738 412 417", "PHONE"),
        ("32 372 55 28", "PHONE"),
        ("11 8305-6596", "PHONE"),
        ("08-680 87 36", "PHONE"),
        ("08-60 42 30", "PHONE"),
        ("4656 3414", "PHONE"),
        # Diners 4-6-4, 12-digit Maestro
        ("3004 076565 2268", "CREDIT_CARD"),
        ("503885116106", "CREDIT_CARD"),
        ("5604-0831-9492", "CREDIT_CARD"),
        # countries from the SWIFT registry beyond the EU
        ("AZ21NABZ00000000137010001944", "IBAN"),
        ("AL47 2121 1009 0000 0002 3569 8741", "IBAN"),
        ("MK07250120000058984", "IBAN"),
        ("MU17BOMM0101101030300200000MUR", "IBAN"),
        ("XK051212012345678906", "IBAN"),
        ("::ffff:192.0.2.128", "IPV6"),
        # newer Slack formats
        ("xapp-1-A5XMVCIQ6SU-7199352948130-609517585d2fc903faa7629dec948b92", "SLACK_TOKEN"),
        ("xoxe-1-" + "Ab9" * 30, "SLACK_TOKEN"),
        ("xoxe.xoxp-1-" + "Ab9" * 30, "SLACK_TOKEN"),
    ],
)
def test_valid_entities_found(value: str, etype: str) -> None:
    only(value, value, etype)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "1234 5678 9012 3456",  # Luhn fails
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "912-12-3456",  # area 9xx
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "DE88 3704 0044 0532 0130 00",  # mod-97 fails
        "DE89 3704 0044 0532 0130 0",  # wrong length for DE
        "ZZ89 3704 0044 0532 0130 00",  # unknown country
        "256.1.1.1",
        "192.168.1.300",
        "1.2.3",
        "12:30:45",  # a time, not IPv6
        "AKIA123",  # too short
        "ghp_short",
        "eyJub3Rqc29u.eyJzdWIiOiI0MiJ9.sig",  # header not JSON
        _b64({"typ": "JWT"}) + "." + _b64({"sub": "1"}) + ".sig",  # no "alg"
        "12345",
        "call 555 1234",  # too few digits
        "foo@bar",  # no TLD
        # dates, versions, times, order numbers, amounts: not phone numbers
        "2023-01-05",
        "05.03.2021",
        "03/15/2021",
        "v1.2.3.4.1",
        "ORD-2020-123456",
        "PO-1234-5678",
        "INV/2020/12345",
        "$123,456.78",
        "12 345 678",
        "ISBN 978-3-16-148410-0",
        "ZIP 02134-1234",
        "1950-2000",
        "1920x1080",
        "10:30-11:45",
        "000-12-3456",  # the SSN layout, not a phone
        "503885116107",  # 12 digits, Luhn fails
        "411111111116",  # 12 digits, Luhn ok, not a Maestro IIN
        "DK9471518442582559",  # digits after letters: no card
        "fe80::1.5",
    ],
)
def test_invalid_rejected(text: str) -> None:
    assert types(f"x {text} y") == []


def test_a_key_block_without_its_end_line_is_a_key_through_its_body() -> None:
    """From its BEGIN line on, nothing of a key block passes: an END line of another kind, or
    none at all, ends it where its body does."""
    begin = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc+/=\n"
    assert types(f"x {begin}-----END EC PRIVATE KEY-----") == [("PRIVATE_KEY", begin)]
    assert types(f"x {begin}That was it.") == [("PRIVATE_KEY", begin)]
    assert types(f"x {begin}Proc-Type: 4,ENCRYPTED\nQUJD\nDone now.") == [
        ("PRIVATE_KEY", f"{begin}Proc-Type: 4,ENCRYPTED\nQUJD\n")
    ]


def test_validators_directly() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("7992739871a")
    assert ssn_valid("078-05-1120")
    assert not ssn_valid("078051120")
    assert iban_valid("NL91ABNA0417164300")
    assert not iban_valid("NL91ABNA0417164301")
    assert jwt_valid(JWT)
    assert not jwt_valid("a.b")
    assert not jwt_valid("!!!.eyJ9.x")


def test_offsets_and_merge_longest_wins() -> None:
    text = "ip ::ffff:192.168.1.1 end"
    spans = find_all(text)
    assert spans == [Span(3, 21, "IPV6")]  # the embedded IPv4 loses to the longer IPv6
    merged = merge_spans([Span(0, 5, "A"), Span(3, 10, "B"), Span(9, 12, "C"), Span(20, 22, "D")])
    assert merged == [Span(3, 10, "B"), Span(20, 22, "D")]
    # A secret outranks a longer overlapping entity; among secrets the longest wins.
    merged = merge_spans([Span(0, 30, "EMAIL"), Span(0, 20, "GITHUB_TOKEN"), Span(25, 40, "JWT")])
    assert merged == [Span(0, 20, "GITHUB_TOKEN"), Span(25, 40, "JWT")]


def test_adjacent_punctuation() -> None:
    assert types("mail me: bob@example.org.") == [("EMAIL", "bob@example.org")]
    assert types("(ip=10.0.0.1)") == [("IPV4", "10.0.0.1")]
    assert types("card:4111111111111111;") == [("CREDIT_CARD", "4111111111111111")]
    assert types("host bdce::1.") == [("IPV6", "bdce::1")]
    assert types("peer ::ffff:1.2.3.4.") == [("IPV6", "::ffff:1.2.3.4")]
    assert types("(fax (0118) 496 0219)") == [("PHONE", "(0118) 496 0219")]


def test_apostrophes_around_an_email_stay_outside() -> None:
    assert types("it's bob@x.com") == [("EMAIL", "bob@x.com")]
    assert types("'bob@x.com'") == [("EMAIL", "bob@x.com")]
    assert types("O'Brien's: o'brien@x.ie.") == [("EMAIL", "o'brien@x.ie")]


def test_iban_ends_at_its_country_length() -> None:
    text = "IBAN AT35 8399 5611 9696 3430 BIC XKDJGBC5. IBAN: AT596108727854473981 Need it"
    assert types(text) == [("IBAN", "AT35 8399 5611 9696 3430"), ("IBAN", "AT596108727854473981")]


def test_card_not_inside_a_token() -> None:
    assert types("xapp-1-A5XMVCIQ6SU-7199352948130-609517585d2fc903") == [
        ("SLACK_TOKEN", "xapp-1-A5XMVCIQ6SU-7199352948130-609517585d2fc903")
    ]
    assert types("id IE15EADJ21930105684024 or 4111111111111111abc") == []


def test_secret_wins_over_email() -> None:
    token = "ghp_" + "A1b2" * 9
    assert types(f"git clone https://{token}@github.com/acme/app.git") == [("GITHUB_TOKEN", token)]
    assert types(f"{token}@github.com") == [("GITHUB_TOKEN", token)]


def test_no_match_inside_longer_numbers() -> None:
    assert types("order 41111111111111119999999") == []
    assert types("1123-45-6789") == []


def test_protocols_and_max_length() -> None:
    recs = default_recognizers()
    assert len({r.entity_type for r in recs}) == 12 and len(recs) == 13  # two kinds of EMAIL
    for r in recs:
        assert isinstance(r, Recognizer)
        assert isinstance(r, StreamingRecognizer)
        assert r.max_length > 0
    by_type = {r.entity_type: r.max_length for r in reversed(recs)}  # the first of each type
    assert by_type["EMAIL"] == 254
    assert by_type["CREDIT_CARD"] >= 19
    assert by_type["PRIVATE_KEY"] >= 4096


# Characters and fragments each recognizer cares about, to probe its stream contract.
_PROBES: dict[str, tuple[str, list[str]]] = {
    "EMAIL": ("ab.'@-_ 1%+", ["o'brien@x.io", "a@b.co", ".com", "it's "]),
    "PHONE": ("0123 ()+.-/x\n", ["+33 (0)2 35 55", "555-123-4567", "x12", "(0114) 496"]),
    "CREDIT_CARD": ("0145 -a", ["4111 1111 1111 1111", "3004 076565 2268", "503885116106"]),
    "US_SSN": ("0123-5 ", ["123-45-6789"]),
    "IBAN": ("ATZ0189 BIC", ["AT35 8399 5611 9696 3430", "AT596108727854473981"]),
    "IPV4": ("0129. :", ["10.0.0.1", "255."]),
    "IPV6": ("0af:.1 g", ["::ffff:1.2.3.4", "fe80::1", "07b4:b6b9:005c:baa0:2234:3942:e6eb"]),
    "AWS_ACCESS_KEY": ("AKIS0Z a", ["AKIAIOSFODNN7EXAMPLE"]),
    "GITHUB_TOKEN": ("ghp_0aZ ", ["ghp_" + "a1" * 18, "github_pat_"]),
    "SLACK_TOKEN": ("xoxbe.-1aA ", ["xoxe.xoxp-1-", "xapp-1-", "xoxb-", "a" * 10]),
    "JWT": ("eyJ.-_aZ0 ", [JWT, "eyJhbGciOiJI"]),
    "PRIVATE_KEY": ("-BEGIN PRVATKYD\n", [PEM, "-----BEGIN ", "-----END RSA PRIVATE KEY-----"]),
}
_RECS = {r.entity_type: r for r in default_recognizers()}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), etype=st.sampled_from(sorted(_PROBES)))
def test_pending_start_is_truthful(data: st.DataObject, etype: str) -> None:
    """Whatever follows, candidates starting before ``pending_start`` never change."""
    alphabet, fragments = _PROBES[etype]
    piece = st.text(alphabet=alphabet, max_size=10) | st.sampled_from(fragments)
    text = "".join(data.draw(st.lists(piece, max_size=8)))
    rec = _RECS[etype]
    whole = rec.scan(text, 0, len(text))
    for n in range(len(text) + 1):
        found, pending = rec.analyze(text, 0, n)
        cut = n if pending is None else pending
        assert [c for c in found if c[0] < cut] == [c for c in whole if c[0] < cut], (text, n)
