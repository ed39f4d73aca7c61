"""Who is calling (services/router/auth/): API keys, JWTs, principals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.errors import NotFound, PermissionDenied, Unauthenticated
from services.router.auth.authenticator import Authenticator
from services.router.auth.config import AuthSection
from services.router.auth.keys import KeyStore
from services.router.auth.principal import Principal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- keys ----------------------------------------------------------------------------------


def test_a_key_is_stored_as_a_hash_and_found_by_its_secret(tmp_path: Path):
    store = KeyStore(tmp_path / "keys.json")
    rec, secret = store.create(tenant="acme", tier="premium", models=["small"], name="ci")
    assert secret.startswith(f"sy-{rec.key_id}.")
    stored = (tmp_path / "keys.json").read_text()
    assert secret not in stored and secret.split(".", 1)[1] not in stored
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    found = store.lookup(secret)
    assert found is not None and (found.tenant, found.tier, found.models) == (
        "acme",
        "premium",
        ("small",),
    )
    for bad in ("", "garbage", f"sy-{rec.key_id}.wrong", secret + "x", "sy-short.x"):
        assert store.lookup(bad) is None, bad


def test_a_revocation_reaches_another_store_on_the_same_file_within_its_reload(tmp_path: Path):
    clock = Clock()
    one = KeyStore(tmp_path / "keys.json", clock=clock)
    other = KeyStore(tmp_path / "keys.json", clock=clock)  # another router replica
    rec, secret = one.create(tenant="acme", tier="standard")
    clock.now += 0.6
    assert other.lookup(secret) is not None  # a new key is seen
    one.revoke(rec.key_id)
    assert one.lookup(secret) is None  # at once where it was revoked
    clock.now += 0.6
    assert other.lookup(secret) is None  # and within the reload period elsewhere
    assert [r.key_id for r in other.all()] == [rec.key_id] and other.all()[0].revoked > 0
    with pytest.raises(NotFound, match="no API key 'nope'"):
        one.revoke("nope")


def test_keys_survive_a_restart(tmp_path: Path):
    _, secret = KeyStore(tmp_path / "k.json").create(tenant="acme", tier="free")
    assert KeyStore(tmp_path / "k.json").lookup(secret) is not None


# -- principals ----------------------------------------------------------------------------


def test_a_principal_may_lower_its_priority_never_raise_it():
    p = Principal(tenant="t", tier="standard", priority=0)
    assert p.turn_priority(0) == 0 and p.turn_priority(5) == 0 and p.turn_priority(-3) == -3
    premium = Principal(tenant="t", tier="premium", priority=10)
    assert premium.turn_priority(0) == 10 and premium.turn_priority(20) == 10


def test_a_principal_is_held_to_its_models():
    p = Principal(tenant="acme", tier="free", priority=0, models=frozenset({"small"}))
    p.check_model("small", "chat")
    with pytest.raises(PermissionDenied, match=r"model 'reasoning' \(large\) is not allowed"):
        p.check_model("large", "reasoning")
    Principal(tenant="acme", tier="free", priority=0).check_model("large", "large")  # all


# -- the authenticator -----------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys.json")


async def test_api_keys_map_to_their_principal_with_the_tier_priority(keys: KeyStore):
    auth = Authenticator(AuthSection.model_validate({}), keys)
    rec, secret = keys.create(tenant="acme", tier="premium", models=["small"])
    p = await auth.authenticate(f"Bearer {secret}")
    assert (p.tenant, p.tier, p.priority, p.models) == ("acme", "premium", 10, {"small"})
    assert p.key_id == f"k:{rec.key_id}"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "no credentials"),
        ("Basic abc", "must read `Bearer <API key or JWT>`"),
        ("Bearer", "must read `Bearer <API key or JWT>`"),
        ("Bearer garbage", "the API key is not valid"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", "this mesh takes no JWTs"),
    ],
)
async def test_missing_or_bad_credentials_are_unauthenticated(keys, header, message):
    auth = Authenticator(AuthSection.model_validate({}), keys)
    with pytest.raises(Unauthenticated, match=message.replace("(", r"\(").replace(")", r"\)")):
        await auth.authenticate(header)


async def test_a_revoked_key_is_unauthenticated(keys: KeyStore):
    auth = Authenticator(AuthSection.model_validate({}), keys)
    rec, secret = keys.create(tenant="acme", tier="standard")
    await auth.authenticate(f"Bearer {secret}")
    keys.revoke(rec.key_id)
    with pytest.raises(Unauthenticated, match="not valid"):
        await auth.authenticate(f"Bearer {secret}")


async def test_without_authentication_everyone_is_anonymous(keys):
    auth = Authenticator(AuthSection.model_validate({"enabled": False}), keys)
    p = await auth.authenticate("")
    assert (p.tenant, p.tier) == ("anonymous", "standard")


def test_auth_config_names_a_bad_default_tier():
    with pytest.raises(ValueError, match=r"auth\.default_tier: 'gold' is not one of the tiers"):
        AuthSection.model_validate({"default_tier": "gold"})


# -- JWTs ----------------------------------------------------------------------------------


@pytest.fixture
def idp(tmp_path: Path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))

    def token(**claims) -> str:
        now = int(time.time())
        base = {"iss": "https://idp.test", "aud": "switchyard", "exp": now + 60, "iat": now}
        return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": "k1"})

    cfg = AuthSection.model_validate(
        {"jwt": {"issuer": "https://idp.test", "audiences": ["switchyard"], "jwks_file": jwks}}
    )
    return cfg, token


async def test_a_valid_jwt_maps_its_claims_to_a_principal(idp, keys):
    cfg, token = idp
    auth = Authenticator(cfg, keys)
    p = await auth.authenticate(
        f"Bearer {token(sub='alice', tenant='acme', tier='premium', models=['small'])}"
    )
    assert (p.tenant, p.tier, p.priority, p.models, p.key_id) == (
        "acme",
        "premium",
        10,
        {"small"},
        "jwt:alice",
    )
    p = await auth.authenticate(f"Bearer {token(tenant='beta')}")
    assert (p.tenant, p.tier) == ("beta", "standard")  # the default tier


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"tenant": "acme", "aud": "someone-else"}, "audience is not one of switchyard"),
        ({"tenant": "acme", "exp": int(time.time()) - 3600}, "has expired"),
        ({"tenant": "acme", "iss": "https://evil.test"}, "issuer is not https://idp.test"),
        ({}, "no 'tenant' claim"),
        ({"tenant": "acme", "tier": "gold"}, "tier 'gold' of this credential is not one of"),
    ],
)
async def test_bad_jwts_are_unauthenticated_saying_why(idp, keys, claims, message):
    cfg, token = idp
    auth = Authenticator(cfg, keys)
    with pytest.raises(Unauthenticated, match=message):
        await auth.authenticate(f"Bearer {token(**claims)}")


async def test_a_jwt_signed_by_another_key_is_refused(idp, keys):
    cfg, _ = idp
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"iss": "https://idp.test", "aud": "switchyard", "exp": int(time.time()) + 60,
         "tenant": "acme"},
        other,
        algorithm="RS256",
        headers={"kid": "k1"},
    )  # fmt: skip
    with pytest.raises(Unauthenticated, match="not valid"):
        await Authenticator(cfg, keys).authenticate(f"Bearer {forged}")
