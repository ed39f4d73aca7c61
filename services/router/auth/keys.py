"""API keys, stored only as hashes, in one file every router replica reads.

A key reads `sy-<id>.<secret>`: the id (12 hex digits) names the record, the secret (32 random
bytes, base64url) is shown once, when the key is created, and kept only as its SHA-256 (a
random 256-bit secret needs no slow hash). A record maps the key to a principal: tenant, tier,
allowed models, quotas. The file is replaced atomically on every change, under a lock, and each
reader notices a change within `reload_seconds` (0.5 s), so a key created or revoked through
one router is honoured by every replica sharing the file within a second, without a restart;
keys survive restarts.

    store = KeyStore(Path("~/.cache/switchyard/keys.json"))
    key, secret = store.create(tenant="acme", tier="premium", models=["small"], name="ci")
    store.lookup(secret)       # the record, or None (unknown, revoked, malformed)
    store.all()                # every record, revoked ones too
    store.revoke(key.key_id)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument, NotFound
from services.common.files import WatchedJson

PREFIX = "sy-"
ID_HEX = 12


@dataclass(frozen=True)
class KeyRecord:
    """One API key as stored (never its secret)."""

    key_id: str
    hash: str  # sha256 hex of the secret
    tenant: str
    tier: str
    models: tuple[str, ...] = ()
    name: str = ""
    created: float = 0.0  # unix time
    revoked: float = 0.0  # unix time; 0: active
    quotas: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return not self.revoked


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """(key id, the whole token) of something shaped like a key; None otherwise."""
    if not token.startswith(PREFIX):
        return None
    key_id, dot, _secret = token[len(PREFIX) :].partition(".")
    if not dot or len(key_id) != ID_HEX or not _secret:
        return None
    return key_id, token


class KeyStore:
    def __init__(
        self,
        path: Path,
        *,
        reload_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._doc = WatchedJson(
            path, {"version": 1, "keys": {}}, reload_seconds=reload_seconds, clock=clock
        )
        self.path = self._doc.path
        self._records: dict[str, KeyRecord] = {}
        self._version = -1

    # -- reading ---------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        try:
            data = self._doc.data(force)
        except ValueError as e:
            raise ValueError(f"{self.path}: not a key file ({e})") from None
        if self._doc.version != self._version:
            self._records = {
                key_id: KeyRecord(key_id=key_id, **{**rec, "models": tuple(rec.get("models", ()))})
                for key_id, rec in data.get("keys", {}).items()
            }
            self._version = self._doc.version

    def lookup(self, token: str) -> KeyRecord | None:
        """The active record whose secret `token` is; None for anything else."""
        parsed = parse(token)
        if parsed is None:
            return None
        self._refresh()
        rec = self._records.get(parsed[0])
        if rec is None or not rec.active or not hmac.compare_digest(rec.hash, _hash(token)):
            return None
        return rec

    def get(self, key_id: str) -> KeyRecord | None:
        self._refresh()
        return self._records.get(key_id)

    def all(self) -> list[KeyRecord]:
        self._refresh(force=True)
        return sorted(self._records.values(), key=lambda r: (r.created, r.key_id))

    # -- writing ---------------------------------------------------------------------------

    def _writing(self) -> AbstractContextManager[dict[str, Any]]:
        """The file's data, under an exclusive lock, written back atomically."""
        return self._doc.edit()

    def create(
        self,
        *,
        tenant: str,
        tier: str,
        models: list[str] | tuple[str, ...] = (),
        name: str = "",
        quotas: dict[str, int] | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key: its record, and its secret (returned this once, never stored)."""
        if not tenant:
            raise InvalidArgument("tenant is required")
        key_id = secrets.token_hex(ID_HEX // 2)
        token = f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
        rec = KeyRecord(
            key_id=key_id,
            hash=_hash(token),
            tenant=tenant,
            tier=tier,
            models=tuple(models),
            name=name,
            created=time.time(),
            quotas=dict(quotas or {}),
        )
        with self._writing() as data:
            fields = asdict(rec)
            del fields["key_id"]
            fields["models"] = list(rec.models)
            data.setdefault("keys", {})[key_id] = fields
        return rec, token

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key (its record stays, marked revoked); NotFound for an unknown id."""
        with self._writing() as data:
            rec = data.get("keys", {}).get(key_id)
            if rec is None:
                raise NotFound(f"no API key {key_id!r} (see `switchyard admin keys list`)")
            if not rec.get("revoked"):
                rec["revoked"] = time.time()
        out = self.get(key_id)
        assert out is not None
        return out
