"""Recognizers: checksums and structure are validated, not just pattern-matched."""

from __future__ import annotations

import base64
import json

import pytest

from services.safety.recognizers import (
    NerBackend,
    Recognizer,
    Span,
    StreamingRecognizer,
    default_recognizers,
    find_all,
    iban_valid,
    jwt_valid,
    load_ner_backend,
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
        "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----",  # mismatched
        "foo@bar",  # no TLD
    ],
)
def test_invalid_rejected(text: str) -> None:
    assert types(f"x {text} y") == []


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


def test_adjacent_punctuation() -> None:
    assert types("mail me: bob@example.org.") == [("EMAIL", "bob@example.org")]
    assert types("(ip=10.0.0.1)") == [("IPV4", "10.0.0.1")]
    assert types("card:4111111111111111;") == [("CREDIT_CARD", "4111111111111111")]


def test_no_match_inside_longer_numbers() -> None:
    assert types("order 41111111111111119999999") == []
    assert types("1123-45-6789") == []


def test_protocols_and_max_length() -> None:
    recs = default_recognizers()
    assert len({r.entity_type for r in recs}) == len(recs) == 12
    for r in recs:
        assert isinstance(r, Recognizer)
        assert isinstance(r, StreamingRecognizer)
        assert r.max_length > 0
    by_type = {r.entity_type: r.max_length for r in recs}
    assert by_type["EMAIL"] == 254
    assert by_type["CREDIT_CARD"] >= 19
    assert by_type["PRIVATE_KEY"] >= 4096


def test_ner_backend_optional() -> None:
    backend = load_ner_backend()
    assert backend is None or isinstance(backend, NerBackend)
