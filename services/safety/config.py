"""Safety policy configuration: actions per entity type, by default, per model and per tenant.

    default: {default_action: redact, actions: {IPV4: allow}}
    models:  {large: {actions: {EMAIL: mask}}}
    tenants: {acme: {actions: {CREDIT_CARD: block}}}
    hash_secret: ${SWITCHYARD_SAFETY_HASH_SECRET:-change-me}

The most specific setting wins: tenant over model over default. `hash` replacements are stable per
tenant: the key is derived from `hash_secret` and the tenant name.
"""

from __future__ import annotations

import hashlib
import hmac

import pydantic

from services.common.config import StrictModel
from services.safety.scrubber import Action, Policy


class PolicySection(StrictModel):
    default_action: Action | None = None  # for types not listed; inherits when unset
    actions: dict[str, Action] = pydantic.Field(default_factory=dict)  # entity type → action


class SafetyConfig(StrictModel):
    default: PolicySection = pydantic.Field(
        default_factory=lambda: PolicySection(default_action="redact")
    )
    models: dict[str, PolicySection] = pydantic.Field(default_factory=dict)
    tenants: dict[str, PolicySection] = pydantic.Field(default_factory=dict)
    hash_secret: str = "switchyard-local"  # set a real secret in production

    def policy(self, tenant: str = "", model: str = "") -> Policy:
        """The effective policy of a (tenant, model) turn."""
        default_action = self.default.default_action or "redact"
        actions = dict(self.default.actions)
        for section in (self.models.get(model), self.tenants.get(tenant)):
            if section is not None:
                actions.update(section.actions)
                default_action = section.default_action or default_action
        key = hmac.new(self.hash_secret.encode(), tenant.encode(), hashlib.sha256).digest()
        return Policy(actions=actions, default=default_action, tenant_key=key)
