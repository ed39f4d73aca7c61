"""A principal: who a caller is, once authenticated, as every later step sees it.

The router resolves each turn's credentials to one `Principal` and passes on only what the mesh
needs, in headers the client cannot set (its copies are stripped at Envoy's listener): the
tenant, the tier, the turn's priority. Quotas are carried for the tenant work that enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pydantic

from services.common.config import StrictModel
from services.common.errors import PermissionDenied

ANONYMOUS = "anonymous"


class Quotas(StrictModel):
    """A tenant's (or key's) budget; 0 means unlimited. Carried now, enforced by the quota
    ledger (the tenant work)."""

    tokens_per_minute: int = pydantic.Field(0, ge=0)
    tokens_per_day: int = pydantic.Field(0, ge=0)
    requests_per_minute: int = pydantic.Field(0, ge=0)
    concurrent_streams: int = pydantic.Field(0, ge=0)
    default_max_tokens: int = pydantic.Field(0, ge=0)  # reserved when a turn leaves it unset


@dataclass(frozen=True)
class Principal:
    tenant: str
    tier: str
    priority: int  # the highest priority its turns get (its tier's): a client may lower it
    models: frozenset[str] = frozenset()  # models (served names) it may use; empty: all
    key_id: str = ""  # the API key ("k:<id>") or token subject ("jwt:<sub>") that proved it
    quotas: Quotas = field(default_factory=lambda: Quotas.model_validate({}))

    def check_model(self, model: str, requested: str) -> None:
        """PERMISSION_DENIED unless the principal may use `model` (the served name that
        `requested`, an alias or "auto", resolved to)."""
        if self.models and model not in self.models:
            asked = (
                f"model {requested!r} ({model})"
                if requested and requested != model
                else (f"model {model!r}")
            )
            raise PermissionDenied(
                f"{asked} is not allowed for tenant {self.tenant!r} "
                f"(allowed: {', '.join(sorted(self.models))})"
            )

    def turn_priority(self, requested: int) -> int:
        """The priority a turn runs at: the tier's, or less when the client asks for less
        (0, the default, means the tier's)."""
        return self.priority if requested == 0 else min(requested, self.priority)
