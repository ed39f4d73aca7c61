"""Credentials → a principal, once per turn, at the edge (the router's ext_proc).

`authorization: Bearer <token>`: a token shaped like a JWT is verified against the identity
provider's keys (`jwt`), anything else is looked up as an API key (`keys`). No credentials, a
malformed header, an unknown, revoked or expired credential: UNAUTHENTICATED saying which. With
`auth.enabled: false` every turn is the anonymous tenant's at the default tier.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common.errors import Unauthenticated
from services.router.auth.config import AuthSection, default_keys_file
from services.router.auth.jwt import JwtVerifier, looks_like_jwt
from services.router.auth.keys import KeyRecord, KeyStore
from services.router.auth.principal import ANONYMOUS, Principal, Quotas

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, cfg: AuthSection, keys: KeyStore | None = None) -> None:
        self.cfg = cfg
        self.keys = keys or KeyStore(cfg.keys_file or default_keys_file())
        self._jwt = JwtVerifier(cfg.jwt) if cfg.jwt is not None else None
        self._anonymous = self._principal(ANONYMOUS, cfg.default_tier, (), "")
        # Each key's principal, built once per record (a reload makes new records).
        self._of_key: dict[str, tuple[KeyRecord, Principal]] = {}
        if not cfg.enabled:
            log.warning(
                "authentication is OFF (auth.enabled: false): every caller is tenant %r",
                ANONYMOUS,
            )

    def _principal(
        self, tenant: str, tier: str, models: Any, key_id: str, quotas: Any = None
    ) -> Principal:
        t = self.cfg.tiers.get(tier)
        if t is None:
            raise Unauthenticated(
                f"tier {tier!r} of this credential is not one of the mesh's tiers "
                f"({', '.join(sorted(self.cfg.tiers))})"
            )
        return Principal(
            tenant=tenant,
            tier=tier,
            priority=t.priority,
            models=frozenset(models or ()),
            key_id=key_id,
            quotas=Quotas.model_validate(quotas or {}),
        )

    def of_key(self, rec: KeyRecord) -> Principal:
        cached = self._of_key.get(rec.key_id)
        if cached is not None and cached[0] is rec:
            return cached[1]
        principal = self._principal(rec.tenant, rec.tier, rec.models, f"k:{rec.key_id}", rec.quotas)
        self._of_key[rec.key_id] = (rec, principal)
        return principal

    async def authenticate(self, authorization: str) -> Principal:
        """The caller's principal; raises Unauthenticated saying what is wrong."""
        if not self.cfg.enabled:
            return self._anonymous
        if not authorization:
            raise Unauthenticated(
                "no credentials: send `authorization: Bearer <API key or JWT>` "
                "(switchyard admin keys create)"
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the authorization header must read `Bearer <API key or JWT>`")
        if looks_like_jwt(token):
            if self._jwt is None:
                raise Unauthenticated("this mesh takes no JWTs (auth.jwt is not configured)")
            claims = await self._jwt.verify(token)
            c = self._jwt.cfg
            tenant = claims.get(c.tenant_claim)
            if not isinstance(tenant, str) or not tenant:
                raise Unauthenticated(f"the JWT has no {c.tenant_claim!r} claim naming a tenant")
            models = claims.get(c.models_claim) or ()
            if isinstance(models, str):
                models = models.split()
            tier = str(claims.get(c.tier_claim) or self.cfg.default_tier)
            return self._principal(tenant, tier, models, f"jwt:{claims.get('sub', '')}")
        rec = self.keys.lookup(token)
        if rec is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return self.of_key(rec)
