"""The `auth:` section of the mesh config: how callers prove who they are, and what tiers mean.

auth:
  keys_file: ~/.cache/switchyard/keys.json   # API keys (hashes); shared by router replicas
  default_tier: standard
  tiers: {premium: {priority: 10}, standard: {priority: 0}, free: {priority: -10, degrade: true}}
  jwt: {issuer: https://idp.example.com, audiences: [switchyard], jwks_file: jwks.json}
"""

from __future__ import annotations

from pathlib import Path

import pydantic

from services.common.config import StrictModel
from services.common.files import home_path
from services.router.auth.jwt import JwtConfig


class TierConfig(StrictModel):
    # The priority its turns run at (higher first); a client may ask for less, never more.
    priority: int = 0
    # A turn for a saturated (or engineless) model goes to its fallback (`fallbacks:`) rather
    # than wait for it.
    degrade: bool = False


def _default_tiers() -> dict[str, TierConfig]:
    return {
        "premium": TierConfig(priority=10),
        "standard": TierConfig(priority=0),
        "free": TierConfig(priority=-10, degrade=True),
    }


class AuthSection(StrictModel):
    # False: nobody is authenticated, every turn is the anonymous tenant's (logged loudly).
    enabled: bool = True
    # API keys, stored as hashes; None: ~/.cache/switchyard/keys.json ($SWITCHYARD_KEYS).
    keys_file: Path | None = None
    tiers: dict[str, TierConfig] = pydantic.Field(default_factory=_default_tiers)
    default_tier: str = "standard"  # for JWTs without a tier claim, and new keys
    jwt: JwtConfig | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> AuthSection:
        if not self.tiers:
            raise ValueError("auth.tiers: at least one tier is needed")
        if self.default_tier not in self.tiers:
            raise ValueError(
                f"auth.default_tier: {self.default_tier!r} is not one of the tiers "
                f"({', '.join(sorted(self.tiers))})"
            )
        return self


def default_keys_file() -> Path:
    """$SWITCHYARD_KEYS, else $SWITCHYARD_HOME/keys.json (~/.cache/switchyard/keys.json)."""
    return home_path("keys.json", "SWITCHYARD_KEYS")
