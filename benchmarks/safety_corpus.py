"""Synthetic text for `safety.py`: planted PII and secrets with their offsets, clean look-alikes,
and LLM-like prose with PII sprinkled in.

Faker (seeded) supplies emails, phone numbers of several locales, cards, SSNs, IBANs, IPs and the
filler sentences; the secrets (AWS access keys, GitHub and Slack tokens, JWTs, PEM private keys)
are generated here in their published formats. Look-alikes are built to fail the check a real
entity passes (Luhn, SSA ranges, mod-97, octet range), or to share only the shape of one.
Luhn and mod-97 are re-implemented here so the corpus does not depend on the code it scores.

Faker is imported by `load_faker()` only, so `safety.py --help` works without it.
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TYPES = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN",
    "IPV4",
    "IPV6",
    "AWS_ACCESS_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "JWT",
    "PRIVATE_KEY",
)

PHONE_LOCALES = (
    "en_US", "en_CA", "en_GB", "en_AU", "en_IN", "de_DE", "fr_FR", "it_IT",
    "es_ES", "nl_NL", "pl_PL", "sv_SE", "pt_BR", "ja_JP",
)  # fmt: skip
IBAN_LOCALES = (
    "en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT", "pl_PL", "de_CH", "de_AT", "pt_PT",
    "fi_FI", "no_NO", "en_IE", "cs_CZ", "da_DK", "el_GR", "ro_RO", "tr_TR", "pt_BR", "uk_UA",
    "az_AZ",
)  # fmt: skip
CARD_BRANDS = (
    "visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16",
    "maestro",
)  # fmt: skip

# Phone extensions ("x123", " x150") are not part of the scored entity: the number before them
# is. Numbers Faker writes as bare digits (no "+", no separator) are out of scope: a regex
# cannot tell them from order numbers, so they are scored apart and left out of the totals.
_PHONE_EXT = re.compile(r"\s*(?:x|ext\.?\s*)\d+$")

_B32 = string.ascii_uppercase + "234567"
_ALNUM = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"

# Sentence templates: {x} is the entity, {label} a word for its kind.
_TEMPLATES = (
    "Please use {x} from now on.",
    "The {label} on file is {x}.",
    "{label}: {x}",
    "({label} {x})",
    'The config has "{label}": "{x}", which we should rotate.',
    "Run it with `{x}` and check the logs.",
    "- {label}: {x}\n",
    "{x}, as discussed on the call.",
    "I think the {label} is {x}, but please double-check.",
    "<td>{x}</td>",
)
_LABELS = {
    "EMAIL": ("email", "contact", "reply-to address"),
    "PHONE": ("phone", "mobile", "call me at", "fax"),
    "CREDIT_CARD": ("card number", "card", "Visa"),
    "US_SSN": ("SSN", "social security number"),
    "IBAN": ("IBAN", "account", "bank account"),
    "IPV4": ("server", "IP", "gateway"),
    "IPV6": ("host", "IPv6 address", "peer"),
    "AWS_ACCESS_KEY": ("aws_access_key_id", "access key"),
    "GITHUB_TOKEN": ("GITHUB_TOKEN", "token", "PAT"),
    "SLACK_TOKEN": ("SLACK_BOT_TOKEN", "token"),
    "JWT": ("Authorization: Bearer", "id_token", "session token"),
    "PRIVATE_KEY": ("private key", "key"),
}
_TYPE_TEMPLATES = {
    "EMAIL": ("Write to <{x}> or mailto:{x} if it bounces.",),
    "IBAN": ("IBAN {x} BIC {bic}.", "Pay to {x} (ref. invoice 2024-118)."),
    "IPV4": ("curl http://{x}:8080/healthz returned 503.",),
    "IPV6": ("curl -g 'http://[{x}]:8080/' timed out.",),
    "AWS_ACCESS_KEY": ("export AWS_ACCESS_KEY_ID={x}",),
    "GITHUB_TOKEN": ("git clone https://{x}@github.com/acme/app.git",),
    "JWT": ("curl -H 'Authorization: Bearer {x}' https://api.example.com/v1/me",),
    "PRIVATE_KEY": ("Here is the key:\n```\n{x}\n```\n", "key.pem:\n{x}\n"),
}


@dataclass(frozen=True)
class Planted:
    """A planted entity: ``text[start:end]`` of a document is of type ``type``."""

    start: int
    end: int
    type: str
    fmt: str  # sub-format or locale, e.g. "de_DE" or "amex"
    in_scope: bool = True

    def moved(self, by: int) -> Planted:
        return Planted(self.start + by, self.end + by, self.type, self.fmt, self.in_scope)


@dataclass
class Doc:
    text: str
    planted: list[Planted] = field(default_factory=list)
    decoy: str = ""  # kind of look-alike this document carries, if any


@dataclass(frozen=True)
class Sample:
    """An entity as inserted: ``text[lo:hi]`` is what is scored (``text`` may carry more)."""

    text: str
    fmt: str
    lo: int = 0
    hi: int = -1  # -1: the end of text
    in_scope: bool = True


def load_faker() -> Any:
    """The `faker` module, or SystemExit saying how to install it."""
    try:
        return importlib.import_module("faker")
    except ImportError:
        raise SystemExit(
            "benchmarks/safety.py needs Faker for its corpus: .venv/bin/pip install faker"
        ) from None


# --------------------------------------------------------------------------- checks


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def mod97_ok(iban: str) -> bool:
    s = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in s)) % 97 == 1


def _chars(rnd: random.Random, alphabet: str, n: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def _digits(rnd: random.Random, lo: int, hi: int) -> str:
    return str(rnd.randrange(1, 10)) + _chars(rnd, string.digits, rnd.randint(lo, hi) - 1)


def _ascii(name: str) -> str:
    """Lower-case ASCII letters and digits of a (Faker) name."""
    return re.sub(r"[^a-z0-9]", "", name.lower().encode("ascii", "ignore").decode())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pem(name: str, body: bytes, width: int = 64) -> list[str]:
    b64 = base64.b64encode(body).decode()
    lines = [b64[i : i + width] for i in range(0, len(b64), width)]
    return [f"-----BEGIN {name}-----", *lines, f"-----END {name}-----"]


# --------------------------------------------------------------------------- generators


class Generator:
    """Seeded entities, look-alikes, documents and prose."""

    def __init__(self, faker_module: Any, seed: int) -> None:
        self.rnd = random.Random(seed)
        self._faker_cls = faker_module.Faker
        self._fakers: dict[str, Any] = {}
        self._seed = seed
        self.en = self.faker("en_US")
        self._gen: dict[str, Callable[[], Sample]] = {
            "EMAIL": self.email,
            "PHONE": self.phone,
            "CREDIT_CARD": self.card,
            "US_SSN": lambda: Sample(self.en.ssn(), "dashed"),
            "IBAN": self.iban,
            "IPV4": self.ipv4,
            "IPV6": self.ipv6,
            "AWS_ACCESS_KEY": self.aws_key,
            "GITHUB_TOKEN": self.github_token,
            "SLACK_TOKEN": self.slack_token,
            "JWT": self.jwt,
            "PRIVATE_KEY": self.private_key,
        }

    def faker(self, locale: str) -> Any:
        if locale not in self._fakers:
            f = self._faker_cls(locale)
            f.seed_instance(self._seed * 1000 + len(self._fakers))
            self._fakers[locale] = f
        return self._fakers[locale]

    def entity(self, entity_type: str) -> Sample:
        return self._gen[entity_type]()

    # -- structured PII (Faker)

    def email(self) -> Sample:
        f = self.faker(self.rnd.choice(("en_US", "de_DE", "fr_FR", "es_ES")))
        kind = self.rnd.randrange(6)
        if kind == 0:
            return Sample(f.email(), "faker email")
        if kind == 1:
            return Sample(f.free_email(), "free mail")
        if kind == 2:
            return Sample(f.company_email(), "company")
        first, last = (_ascii(f.first_name()), _ascii(f.last_name()))
        if kind == 3:
            tag = _ascii(f.word()) or "news"
            sub = self.rnd.choice(("mail", "eu", "corp", "billing"))
            return Sample(f"{first}.{last}+{tag}@{sub}.{f.domain_name()}", "plus tag, subdomain")
        if kind == 4:
            return Sample(f"{first}.{last}@{f.domain_name()}".upper(), "upper case")
        last = self.rnd.choice(("o'brien", "o'neill", "d'angelo", "o'connor", "d'souza"))
        return Sample(f"{first}.{last}@{f.free_email_domain()}", "apostrophe (o'brien@)")

    def phone(self) -> Sample:
        locale = self.rnd.choice(PHONE_LOCALES)
        value = self.faker(locale).phone_number()
        ext = _PHONE_EXT.search(value)
        if ext is not None:
            return Sample(value, f"{locale} +ext (scored w/o ext)", hi=ext.start())
        if value.isdigit():
            return Sample(value, "bare digits (out of scope)", in_scope=False)
        return Sample(value, locale)

    def card(self) -> Sample:
        brand = self.rnd.choice(CARD_BRANDS)
        digits = self.en.credit_card_number(brand)
        sep = self.rnd.choice(("", " ", "-"))
        if not sep:
            return Sample(digits, brand)
        if brand in ("amex", "diners", "jcb15"):
            groups = [digits[:4], digits[4:10], digits[10:]]  # printed 4-6-5 / 4-6-4
        else:
            groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
        return Sample(sep.join(groups), brand)

    def iban(self) -> Sample:
        value = self.faker(self.rnd.choice(IBAN_LOCALES)).iban()
        if self.rnd.random() < 0.5:  # print format, groups of four
            value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        return Sample(value, value[:2])

    def ipv4(self) -> Sample:
        kind = self.rnd.randrange(4)
        ip = self.en.ipv4_public() if kind else self.en.ipv4_private()
        if kind == 1:
            port = self.rnd.choice((22, 443, 5432, 8080))
            return Sample(f"{ip}:{port}", "with :port", hi=len(ip))
        if kind == 2:
            return Sample(f"{ip}/{self.rnd.randint(8, 32)}", "CIDR", hi=len(ip))
        return Sample(ip, "public" if kind else "private")

    def ipv6(self) -> Sample:
        addr = ipaddress.IPv6Address(self.en.ipv6())
        kind = self.rnd.randrange(5)
        if kind == 0:
            return Sample(addr.exploded, "full")
        if kind == 1:
            return Sample(str(addr), "full, no leading zeros")
        if kind == 2:
            keep = 2 * self.rnd.randint(1, 3)
            short = ipaddress.IPv6Address(addr.packed[:keep] + bytes(15 - keep) + b"\x01")
            return Sample(str(short), "compressed ::")
        if kind == 3:
            ip = f"fe80::{self.rnd.randrange(1, 0xFFFF):x}"
            return Sample(f"{ip}%eth0", "link-local %zone", hi=len(ip))
        return Sample(f"::ffff:{self.en.ipv4_public()}", "IPv4-mapped")

    # -- secrets (generated here)

    def aws_key(self) -> Sample:
        prefix = self.rnd.choice(("AKIA", "ASIA"))
        return Sample(prefix + _chars(self.rnd, _B32, 16), prefix)

    def github_token(self) -> Sample:
        kind = self.rnd.choice(("ghp", "gho", "ghu", "ghs", "ghr", "github_pat"))
        if kind == "github_pat":
            body = _chars(self.rnd, _ALNUM, 22) + "_" + _chars(self.rnd, _ALNUM, 59)
            return Sample("github_pat_" + body, kind)
        return Sample(f"{kind}_" + _chars(self.rnd, _ALNUM, 36), kind)

    def slack_token(self) -> Sample:
        r = self.rnd
        kind = r.choice(("xoxb", "xoxp", "xoxa-2", "xoxe.xoxp-1", "xoxe-1", "xapp-1"))
        ids = "-".join(_digits(r, 10, 13) for _ in range(3))
        if kind == "xoxb":
            v = f"xoxb-{_digits(r, 10, 13)}-{_digits(r, 10, 13)}-{_chars(r, _ALNUM, 24)}"
        elif kind == "xoxp":
            v = f"xoxp-{ids}-{_chars(r, _HEX, 32)}"
        elif kind == "xoxa-2":
            v = f"xoxa-2-{ids}-{_chars(r, _HEX, 64)}"
        elif kind == "xapp-1":  # app-level token
            v = f"xapp-1-A{_chars(r, _B32, 10)}-{_digits(r, 13, 13)}-{_chars(r, _HEX, 64)}"
        else:  # with token rotation: access "xoxe.xoxp-1-…", refresh "xoxe-1-…"
            v = f"{kind}-{_chars(r, _ALNUM, 140)}"
        newer = kind.startswith(("xoxe", "xapp"))
        return Sample(v, kind + (" (newer format)" if newer else ""))

    def jwt(self) -> Sample:
        alg = self.rnd.choice(("HS256", "RS256", "none"))
        header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
        claims = {
            "sub": self.en.uuid4(),
            "name": self.en.name(),
            "email": self.en.email(),
            "iat": self.rnd.randrange(1_600_000_000, 1_800_000_000),
        }
        payload = _b64url(json.dumps(claims).encode())
        sig = {"HS256": 32, "RS256": 256, "none": 0}[alg]
        return Sample(f"{header}.{payload}.{_b64url(self.rnd.randbytes(sig))}", alg)

    def private_key(self) -> Sample:
        name, size, width = self.rnd.choice(
            (
                ("RSA PRIVATE KEY", 1190, 64),
                ("PRIVATE KEY", 1218, 64),
                ("EC PRIVATE KEY", 121, 64),
                ("OPENSSH PRIVATE KEY", 411, 70),
                ("ENCRYPTED PRIVATE KEY", 1298, 64),
            )
        )
        lines = _pem(name, self.rnd.randbytes(size), width)
        if self.rnd.random() < 0.2:  # as in a service-account JSON file: a literal \n
            return Sample("\\n".join(lines), "JSON-escaped \\n")
        return Sample("\n".join(lines), name)

    # -- look-alikes

    def lookalike(self) -> tuple[str, str]:
        """Clean text shaped like an entity: ``(text, kind)``."""
        r, f = self.rnd, self.en
        pick = r.choice
        kind = r.randrange(16)
        if kind == 0:
            d = _digits(r, 16, 16)
            while luhn_ok(d):
                d = _digits(r, 16, 16)
            sep = pick(("", " ", "-"))
            return sep.join(d[i : i + 4] for i in range(0, 16, 4)), "16 digits failing Luhn"
        if kind == 1:
            area, group = f"{r.randrange(1, 900):03d}", f"{r.randrange(1, 100):02d}"
            serial = f"{r.randrange(1, 10000):04d}"
            why = r.randrange(5)
            if why < 3:
                area = ("000", "666", f"9{r.randrange(100):02d}")[why]
            elif why == 3:
                group = "00"
            else:
                serial = "0000"
            return f"{area}-{group}-{serial}", "invalid SSN"
        if kind == 2:
            iban = self.faker(pick(IBAN_LOCALES[:20])).iban()
            while mod97_ok(iban):
                iban = f"{iban[:2]}{r.randrange(100):02d}{iban[4:]}"
            return iban, "IBAN, wrong check digits"
        if kind == 3:
            return pick(
                (
                    f"{r.randrange(10)}.{r.randrange(30)}.{r.randrange(30)}",
                    f"v{r.randrange(10)}.{r.randrange(30)}.{r.randrange(30)}.{r.randrange(99)}.1",
                    f"10.0.{r.randrange(10000, 30000)}.{r.randrange(1000, 9999)}",
                    f"{r.randrange(256, 999)}.{r.randrange(256)}.{r.randrange(256)}.1",
                )
            ), "version / out-of-range dotted quad"
        if kind == 4:
            dt = f.date_time()
            return dt.strftime(
                pick(("%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%Y-%m-%dT%H:%M:%SZ", "%H:%M:%S"))
            ), "date / time"
        if kind == 5:
            return pick(
                (
                    f"ORD-{r.randrange(2015, 2026)}-{r.randrange(10**6):06d}",
                    f"#{r.randrange(10**5, 10**7)}",
                    f"PO-{r.randrange(1000, 9999)}-{r.randrange(1000, 9999)}",
                    f"INV/{r.randrange(2015, 2026)}/{r.randrange(10**5):05d}",
                    f"1Z{_chars(r, string.ascii_uppercase + string.digits, 16)}",
                )
            ), "order / tracking number"
        if kind == 6:
            return pick((f.sha256(), f.sha1(), f.md5(), f.sha1()[:7])), "hex hash"
        if kind == 7:
            return f.uuid4(), "UUID"
        if kind == 8:
            return f.mac_address(), "MAC address"
        if kind == 9:
            return pick(
                ("a@b", "user@localhost", "@channel", "@types/node", "admin@intranet", "x@y.z")
            ), "non-email with @"
        if kind == 10:
            return pick(
                (
                    f"${r.randrange(1000, 10**6):,}.{r.randrange(100):02d}",
                    f"{r.randrange(1, 999)} {r.randrange(1000):03d} {r.randrange(1000):03d}",
                    f"{r.randrange(100)}.{r.randrange(100)}%",
                    f"{pick((1280, 1920, 2560))}x{pick((720, 1080, 1440))}",
                    f"RFC {r.randrange(1000, 9999)}",
                    f"ISBN 978-{r.randrange(10)}-{r.randrange(10, 99)}-{r.randrange(10**5, 10**6)}"
                    f"-{r.randrange(10)}",
                    f"ZIP {r.randrange(10000, 99999)}-{r.randrange(1000, 9999)}",
                    f"{r.randrange(1950, 2000)}-{r.randrange(2000, 2025)}",
                )
            ), "number / amount / range"
        if kind == 11:
            return pick(
                (
                    "ghp_" + _chars(r, _ALNUM, 12),
                    f"xoxb-{r.randrange(1000)}",
                    "AKIA" + _chars(r, _B32, 8),
                    "gh_pages",
                    "xoxo, see you",
                )
            ), "truncated token prefix"
        if kind == 12:
            junk = _b64url(r.randbytes(24))
            return pick(
                (
                    _b64url(b'{"alg":"HS256"}'),
                    f"eyJ{junk}.{_b64url(r.randbytes(30))}",
                    f"eyJ{junk}.{_b64url(r.randbytes(30))}.{_b64url(r.randbytes(32))}",
                )
            ), "base64 eyJ…, not a JWT"
        if kind == 13:
            name = pick(("PUBLIC KEY", "CERTIFICATE", "PGP SIGNATURE"))
            return "\n".join(_pem(name, r.randbytes(270))), "PEM public key / certificate"
        if kind == 14:
            return pick(
                ("16:9", f"John {r.randrange(1, 20)}:{r.randrange(1, 40)}", "10:30-11:45")
            ), "ratio / verse / time range"
        return pick(
            (
                f"{r.randrange(1, 9)}.{r.randrange(10**4, 10**5)}",
                f"-{r.randrange(1, 90)}.{r.randrange(10**5, 10**6)}, {r.randrange(1, 180)}."
                f"{r.randrange(10**5, 10**6)}",
                f"{r.randrange(1, 99)}e-{r.randrange(1, 12)}",
            )
        ), "float / coordinates"

    # -- documents

    def sentence(self) -> str:
        return str(self.en.sentence(nb_words=self.rnd.randint(6, 16)))

    def _embed(self, entity_type: str, value: str) -> tuple[str, list[int]]:
        """A sentence around ``value``, and where ``value`` sits in it."""
        template = self.rnd.choice(_TEMPLATES + _TYPE_TEMPLATES.get(entity_type, ()))
        label = self.rnd.choice(_LABELS.get(entity_type, ("value",)))
        pieces = template.replace("{label}", label).replace("{bic}", self.en.swift()).split("{x}")
        text, at = pieces[0], []
        for piece in pieces[1:]:
            at.append(len(text))
            text += value + piece
        return text, at

    def planted_sentence(self, entity_type: str) -> tuple[str, list[Planted]]:
        s = self.entity(entity_type)
        text, at = self._embed(entity_type, s.text)
        hi = len(s.text) if s.hi < 0 else s.hi
        return text, [Planted(a + s.lo, a + hi, entity_type, s.fmt, s.in_scope) for a in at]

    def doc(self, entity_type: str | None) -> Doc:
        """Filler, one planted entity (a look-alike when ``entity_type`` is None), filler."""
        before, after = self.sentence() + " ", " " + self.sentence()
        if entity_type is None:
            value, kind = self.lookalike()
            text, _ = self._embed("", value)
            return Doc(before + text + after, decoy=kind)
        text, planted = self.planted_sentence(entity_type)
        return Doc(before + text + after, [p.moved(len(before)) for p in planted])

    def prose(
        self, n_chars: int, pii_every: float, lookalike_every: float, weights: dict[str, float]
    ) -> tuple[str, list[Planted]]:
        """LLM-like markdown of about ``n_chars``: paragraphs, headings and lists, an entity
        sentence about every ``pii_every`` characters (0: none) and a look-alike about every
        ``lookalike_every`` characters (exponential gaps)."""
        r = self.rnd
        types, w = list(weights), list(weights.values())
        parts: list[str] = []
        planted: list[Planted] = []
        size = 0
        next_pii = r.expovariate(1 / pii_every) if pii_every else float("inf")
        next_look = r.expovariate(1 / lookalike_every)
        while size < n_chars:
            roll = r.random()
            if roll < 0.05:
                piece = f"\n\n## {self.en.catch_phrase()}\n\n"
            elif roll < 0.15:
                piece = f"\n- {self.sentence()}"
            elif roll < 0.2:
                piece = f"\n\n{self.sentence()}"
            else:
                piece = ("" if not parts or parts[-1].endswith("\n") else " ") + self.sentence()
            if size >= next_look:
                piece += " " + self._embed("", self.lookalike()[0])[0]
                next_look = size + r.expovariate(1 / lookalike_every)
            if size >= next_pii:
                text, found = self.planted_sentence(r.choices(types, w)[0])
                planted += [p.moved(size + len(piece) + 1) for p in found]
                piece += " " + text
                next_pii = size + r.expovariate(1 / pii_every)
            parts.append(piece)
            size += len(piece)
        return "".join(parts), planted


def cut_tokens(text: str, rnd: random.Random, mean: int = 4) -> list[str]:
    """``text`` cut as an LLM streams it: pieces of 1 to 2*mean-1 characters (mean ``mean``)."""
    out = []
    pos = 0
    while pos < len(text):
        n = rnd.randint(1, 2 * mean - 1)
        out.append(text[pos : pos + n])
        pos += n
    return out


# --------------------------------------------------------------------------- disguises

_FORMAT = ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad")  # zero-width, soft hyphen
_CYRILLIC = dict(zip("aeopcxyAEKMOPTXB", "аеорсхуАЕКМОРТХВ", strict=True))
_DIGIT_SCRIPTS = (0x0660, 0x06F0, 0x0966, 0xFF10)  # Arabic-Indic, Persian, Devanagari, fullwidth
_SPACES = ("\u00a0", "\u2009", "\u202f")
_DASHES = ("\u2010", "\u2011", "\u2013", "\u2212")
# Disguises any entity can carry, and those of one type.
GENERIC_DISGUISES = ("fullwidth", "zero-width", "look-alike letters", "digits of another script")
TYPE_DISGUISES = {
    "EMAIL": ("(at) (dot)", "[at] [dot]", "spaces around @", "newline before @", "spaced letters",
              "small @", "fullwidth @ and ."),
    "CREDIT_CARD": ("dots", "slashes", "mixed separators", "zero-width separators",
                    "non-breaking spaces", "en dashes"),
    "PHONE": ("non-breaking spaces", "en dashes"),
    "IBAN": ("non-breaking spaces",),
    "US_SSN": ("en dashes",),
}  # fmt: skip


def _inside(rnd: random.Random, value: str, chars: tuple[str, ...], every: int = 3) -> str:
    """``value`` with invisible characters put between its characters (never at its ends)."""
    out = [value[0]]
    for ch in value[1:]:
        if rnd.randrange(every) == 0:
            out.append(rnd.choice(chars))
        out.append(ch)
    return "".join(out)


def disguise(rnd: random.Random, entity_type: str, value: str, how: str) -> str:
    """``value`` written the way ``how`` says (one of GENERIC_DISGUISES or TYPE_DISGUISES)."""
    if how == "fullwidth":
        return "".join(
            chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and rnd.random() < 0.5 else c for c in value
        )
    if how == "zero-width":
        return _inside(rnd, value, _FORMAT)
    if how == "look-alike letters":
        return "".join(_CYRILLIC[c] if c in _CYRILLIC and rnd.random() < 0.5 else c for c in value)
    if how == "digits of another script":
        base = rnd.choice(_DIGIT_SCRIPTS)
        return "".join(chr(base + int(c)) if c.isdigit() else c for c in value)
    if how == "non-breaking spaces":
        return "".join(rnd.choice(_SPACES) if c == " " else c for c in value)
    if how == "en dashes":
        return "".join(rnd.choice(_DASHES) if c == "-" else c for c in value)
    if entity_type == "EMAIL":
        local, _, domain = value.rpartition("@")
        if how == "(at) (dot)":
            return f"{local} (at) {domain.replace('.', ' (dot) ')}"
        if how == "[at] [dot]":
            return f"{local}[at]{domain.replace('.', '[dot]')}"
        if how == "spaces around @":
            return f"{local} @ {domain}"
        if how == "newline before @":
            return f"{local}\n@{domain}"
        if how == "spaced letters":
            return " ".join(value)
        if how == "small @":
            return f"{local}\ufe6b{domain}"
        if how == "fullwidth @ and .":
            return f"{local}\uff20{domain.replace('.', chr(0xFF0E))}"
    if entity_type == "CREDIT_CARD":
        digits = re.sub(r"\D", "", value)
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
        if how in ("dots", "slashes"):
            return ("." if how == "dots" else "/").join(groups)
        if how == "mixed separators":
            return "".join(g + (rnd.choice(" -./") if i < len(groups) - 1 else "")
                           for i, g in enumerate(groups))  # fmt: skip
        if how == "zero-width separators":
            return rnd.choice(_FORMAT[:4]).join(groups)
        if how == "non-breaking spaces":
            return "\u00a0".join(groups)
        if how == "en dashes":
            return "\u2013".join(groups)
    raise ValueError(f"no disguise {how!r} for {entity_type}")


def disguised_doc(gen: Generator, entity_type: str, how: str) -> Doc:
    """A corpus document whose planted entity is written the way ``how`` says."""
    s = gen.entity(entity_type)
    while not s.in_scope:  # (bare-digit phone numbers: out of scope, see `phone`)
        s = gen.entity(entity_type)
    hi = len(s.text) if s.hi < 0 else s.hi
    value = disguise(gen.rnd, entity_type, s.text[s.lo : hi], how)
    text, at = gen._embed(entity_type, value)
    before, after = gen.sentence() + " ", " " + gen.sentence()
    planted = [Planted(len(before) + a, len(before) + a + len(value), entity_type, how)
               for a in at]  # fmt: skip
    return Doc(before + text + after, planted)


def disguised_lookalike(gen: Generator) -> Doc:
    """A look-alike document (no entity) carrying one of the generic disguises."""
    value, kind = gen.lookalike()
    how = gen.rnd.choice(
        ("fullwidth", "zero-width", "look-alike letters", "digits of another script")
    )
    text, _ = gen._embed("", disguise(gen.rnd, "", value, how) if len(value) > 1 else value)
    return Doc(gen.sentence() + " " + text + " " + gen.sentence(), decoy=f"{kind}, {how}")
