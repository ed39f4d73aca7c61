"""Each tenant's policy: quotas, fair-share weight, tier override and prefix-cache group.

Config gives the defaults (`tenants:` in pools.yaml); the admin API (`switchyard admin tenants
set`) writes per-tenant policies to a file every router replica reads within a second, so
quotas, tiers and weights change live, without a restart:

    tenants:
      file: ~/.cache/switchyard/tenants.json   # live policies ($SWITCHYARD_TENANTS)
      default: {quotas: {tokens_per_minute: 200000, concurrent_streams: 32}}
      policies:
        acme: {weight: 4, tier: premium, quotas: {tokens_per_day: 5000000}}
        beta: {cache_group: partners}           # shares its prefix cache with `partners`

A tenant's effective policy is the first of: its live policy (file), its config policy, the
default. A key's own quotas (`admin keys create --quota`) apply on top of its tenant's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic

from services.common.config import StrictModel
from services.common.errors import InvalidArgument
from services.common.files import WatchedJson, home_path
from services.router.auth.principal import Quotas

GROUP_PATTERN = r"^[A-Za-z0-9._-]{0,64}$"


class TenantPolicy(StrictModel):
    # Share of a saturated pool against other backlogged tenants (fair share).
    weight: float = pydantic.Field(1.0, gt=0, le=1000)
    # Overrides the tier its credentials carry (None: theirs).
    tier: str | None = None
    quotas: Quotas = pydantic.Field(default_factory=lambda: Quotas.model_validate({}))
    # Tenants naming the same group share prefix-cache entries; "" keeps the tenant's own.
    cache_group: str = pydantic.Field("", pattern=GROUP_PATTERN)
    # Its deterministic turns answered from (and stored in) the response cache, and how long
    # an answer is kept (0: response_cache.ttl_seconds).
    response_cache: bool = True
    response_cache_ttl_seconds: float = pydantic.Field(0.0, ge=0)


class TenantsSection(StrictModel):
    file: Path | None = None  # live policies; None: $SWITCHYARD_TENANTS or ~/.cache/switchyard
    default: TenantPolicy = pydantic.Field(default_factory=lambda: TenantPolicy.model_validate({}))
    policies: dict[str, TenantPolicy] = pydantic.Field(default_factory=dict)


def cache_salt(tenant: str, policy: TenantPolicy) -> str:
    """The prefix-cache salt of a tenant's turns: its cache group's, or its own."""
    return f"group:{policy.cache_group}" if policy.cache_group else f"tenant:{tenant}"


def default_tenants_file() -> Path:
    return home_path("tenants.json", "SWITCHYARD_TENANTS")


class PolicyStore:
    """Tenant → effective policy; live changes re-read within `reload_seconds`."""

    def __init__(
        self, cfg: TenantsSection, tiers: set[str] | None = None, reload_seconds: float = 0.5
    ) -> None:
        self.cfg = cfg
        self._tiers = tiers
        self._doc = WatchedJson(
            cfg.file or default_tenants_file(),
            {"version": 1, "tenants": {}},
            reload_seconds=reload_seconds,
        )
        self._live: dict[str, TenantPolicy] = {}
        self._version = -1

    def _refresh(self, force: bool = False) -> dict[str, TenantPolicy]:
        data = self._doc.data(force)
        if self._doc.version != self._version:
            live = {}
            for tenant, raw in data.get("tenants", {}).items():
                try:
                    live[tenant] = TenantPolicy.model_validate(raw)
                except pydantic.ValidationError:
                    continue  # a policy this version cannot read: the config's applies
            self._live, self._version = live, self._doc.version
        return self._live

    def get(self, tenant: str) -> TenantPolicy:
        live = self._refresh()
        return live.get(tenant) or self.cfg.policies.get(tenant) or self.cfg.default

    def source(self, tenant: str) -> str:
        if tenant in self._refresh():
            return "live"
        return "config" if tenant in self.cfg.policies else "default"

    def all(self) -> dict[str, TenantPolicy]:
        """Every tenant with a policy of its own (config, then live over it)."""
        return {**self.cfg.policies, **self._refresh(force=True)}

    def set(self, tenant: str, fields: dict[str, Any]) -> TenantPolicy:
        """Replace `tenant`'s live policy by its current one updated with `fields`."""
        if not tenant:
            raise InvalidArgument("tenant is required")
        current = self.get(tenant).model_dump()
        if "quotas" in fields:
            current["quotas"] = {**current["quotas"], **fields.pop("quotas")}
        current.update(fields)
        try:
            policy = TenantPolicy.model_validate(current)
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidArgument(f"tenant policy {where}: {err['msg']}") from None
        if policy.tier is not None and self._tiers is not None and policy.tier not in self._tiers:
            raise InvalidArgument(
                f"tier {policy.tier!r} is not one of the mesh's tiers "
                f"({', '.join(sorted(self._tiers))})"
            )
        with self._doc.edit() as data:
            data.setdefault("tenants", {})[tenant] = policy.model_dump(exclude_defaults=True)
        self._refresh(force=True)
        return policy

    def reset(self, tenant: str) -> None:
        """Drop `tenant`'s live policy: the config's (or the default) applies again."""
        with self._doc.edit() as data:
            data.setdefault("tenants", {}).pop(tenant, None)
        self._refresh(force=True)
