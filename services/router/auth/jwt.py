"""JWTs from an identity provider: signature (its JWKS), issuer, audience and expiry, then the
claims mapped to a principal.

Envoy's `jwt_authn` filter would verify them, but API keys share the `authorization: Bearer`
header and a present-but-not-a-JWT token makes it refuse the turn, so the router verifies both
itself (PyJWT): a token shaped like a JWT (three base64url parts) is checked here, anything else
as an API key. Keys come from a JWKS file (re-read when it changes) or a JWKS URL (fetched off the
event loop, again when a token names a key id not seen yet, at most every 30 s).

    verifier = JwtVerifier(JwtConfig(issuer=..., audiences=[...], jwks_file=...))
    claims = await verifier.verify(token)        # raises Unauthenticated saying why
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pydantic

from services.common.config import StrictModel
from services.common.errors import Unauthenticated

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
REFETCH_SECONDS = 30.0


class JwtConfig(StrictModel):
    issuer: str = pydantic.Field(min_length=1)  # the `iss` tokens must carry
    audiences: list[str] = pydantic.Field(min_length=1)  # one of them must be in `aud`
    jwks_file: Path | None = None  # the provider's keys (JWKS JSON), re-read on change
    jwks_url: str | None = None  # or where to fetch them
    tenant_claim: str = "tenant"  # the claim naming the tenant (required)
    tier_claim: str = "tier"  # the claim naming the tier (default tier when absent)
    models_claim: str = "models"  # a list of allowed models (all when absent)
    leeway_seconds: float = pydantic.Field(30.0, ge=0)  # clock skew allowed on exp/nbf

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("auth.jwt needs exactly one of jwks_file or jwks_url")
        return self


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts[:2]) and token.startswith("eyJ")


class JwtVerifier:
    def __init__(self, cfg: JwtConfig) -> None:
        self.cfg = cfg
        self._keys: dict[str, Any] = {}  # kid → key
        self._stamp: float | None = None
        self._fetched = float("-inf")
        if cfg.jwks_file is not None:
            self._load_file()

    def _set(self, jwks: dict[str, Any]) -> None:
        keys = {}
        for jwk in jwks.get("keys", []):
            try:
                key = jwt.PyJWK.from_dict(jwk)
            except jwt.PyJWTError:
                continue  # a key of a kind we do not take
            keys[str(jwk.get("kid", ""))] = key
        self._keys = keys

    def _load_file(self) -> None:
        assert self.cfg.jwks_file is not None
        stamp = self.cfg.jwks_file.stat().st_mtime
        if stamp != self._stamp:
            self._set(json.loads(self.cfg.jwks_file.read_text()))
            self._stamp = stamp

    def _fetch(self) -> None:
        assert self.cfg.jwks_url is not None
        with urllib.request.urlopen(self.cfg.jwks_url, timeout=5) as resp:
            self._set(json.loads(resp.read()))
        self._fetched = time.monotonic()

    async def _key(self, kid: str) -> Any:
        if self.cfg.jwks_file is not None:
            self._load_file()
        elif kid not in self._keys and time.monotonic() - self._fetched > REFETCH_SECONDS:
            try:
                await asyncio.to_thread(self._fetch)
            except OSError as e:
                raise Unauthenticated(f"the JWT's keys could not be fetched ({e})") from None
        key = self._keys.get(kid) or (self._keys.get("") if len(self._keys) == 1 else None)
        if key is None:
            raise Unauthenticated(f"the JWT is signed with an unknown key (kid {kid!r})")
        return key

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and times check out."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"the JWT is malformed ({e})") from None
        key = await self._key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.cfg.audiences,
                issuer=self.cfg.issuer,
                leeway=self.cfg.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the JWT's audience is not one of {', '.join(self.cfg.audiences)}"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the JWT's issuer is not {self.cfg.issuer}") from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"the JWT has no {e.claim!r} claim") from None
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"the JWT is not valid ({e})") from None
        return claims
