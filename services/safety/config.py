"""Safety policy configuration (deploy/local/safety.yaml): actions per entity type by default, per
model and per tenant; safety categories from term lists; the prompt policy.

    listen: 127.0.0.1:50055              # Safety API and Envoy's ext_proc (gRPC)
    default: {default_action: redact, prompt: redact, actions: {IPV4: allow}}
    models:  {large: {actions: {EMAIL: mask}}}
    tenants: {acme: {prompt: reject, actions: {CREDIT_CARD: block},
                     allow: {domains: [acme.com], values: ["4111 1111 1111 1111"]}}}
    categories: {WEAPONS: [pipe bomb, nerve agent]}
    hash_secret: ${SWITCHYARD_SAFETY_HASH_SECRET:-change-me}

The most specific setting wins: tenant over model over default; allow-lists add up (an address at
an allowed domain, or an allowed value such as a test card number, passes untouched). A category
is an entity type like EMAIL (its action comes from `actions`, else `default_action`). `hash`
replacements are stable per tenant: the key is derived from `hash_secret` and the tenant name.

Prompt policy (`prompt`): `allow` passes prompts as they are; `redact` applies the actions to the
prompt before the engine sees it; `reject` refuses a prompt holding any entity whose action is not
`allow` (INVALID_ARGUMENT). In both `redact` and `reject`, an entity whose action is `block`
refuses the prompt with PERMISSION_DENIED.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from pathlib import Path
from typing import Literal

import pydantic

from services.common.config import StrictModel, load_config
from services.common.tls import TlsConfig
from services.common.tracing import TracingConfig
from services.safety.recognizers import StreamingRecognizer, shared_default_recognizers
from services.safety.scrubber import Action, Policy, allow_key
from services.safety.terms import TermListRecognizer

PromptMode = Literal["allow", "redact", "reject"]

_CATEGORY = re.compile(r"^[A-Z][A-Z0-9_]*$")


class AllowSection(StrictModel):
    """Entities that pass untouched whatever their type's action (added up from the default,
    the model and the tenant): e-mail domains (and their subdomains), and exact values such as
    test card numbers (case, spaces, dashes, dots and slashes aside)."""

    domains: list[str] = pydantic.Field(default_factory=list)
    values: list[str] = pydantic.Field(default_factory=list)

    @pydantic.field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for d in value:
            d = d.strip().lower().lstrip(".")
            if not d or "@" in d or " " in d or "." not in d:
                raise ValueError(f"allow.domains: {d!r} is not a domain like example.com")
            out.append(d)
        return out

    @pydantic.field_validator("values")
    @classmethod
    def _values(cls, value: list[str]) -> list[str]:
        for v in value:
            if not allow_key(v):
                raise ValueError("allow.values: an empty value would allow nothing")
        return value


class PolicySection(StrictModel):
    default_action: Action | None = None  # for types not listed; inherits when unset
    actions: dict[str, Action] = pydantic.Field(default_factory=dict)  # entity type → action
    prompt: PromptMode | None = None  # inherits when unset
    allow: AllowSection = pydantic.Field(default_factory=AllowSection)


class SafetyConfig(StrictModel):
    listen: str = "127.0.0.1:50055"
    metrics_listen: str = "127.0.0.1:0"
    # Plaintext gRPC health only, for probes without a certificate (Kubernetes); "": none.
    health_listen: str = ""
    default: PolicySection = pydantic.Field(
        default_factory=lambda: PolicySection(default_action="redact", prompt="redact")
    )
    models: dict[str, PolicySection] = pydantic.Field(default_factory=dict)
    tenants: dict[str, PolicySection] = pydantic.Field(default_factory=dict)
    categories: dict[str, list[str]] = pydantic.Field(default_factory=dict)
    hash_secret: str = pydantic.Field(default="switchyard-local", repr=False)  # set in production
    tracing: TracingConfig = pydantic.Field(  # the switchyard.safety.scan spans
        default_factory=lambda: TracingConfig.model_validate({})
    )
    # Mutual TLS: the service's identity (role `safety`) and the CA; default the local PKI.
    tls: TlsConfig = pydantic.Field(default_factory=lambda: TlsConfig.model_validate({}))

    @pydantic.field_validator("categories")
    @classmethod
    def _check_categories(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        builtin = {r.entity_type for r in shared_default_recognizers()}
        for name, terms in value.items():
            if not _CATEGORY.match(name):
                raise ValueError(f"{name}: a category name is UPPER_SNAKE_CASE, like WEAPONS")
            if name in builtin:
                raise ValueError(f"{name}: is a built-in entity type, not a category")
            TermListRecognizer(name, terms)  # raises naming the bad term
        return value

    @functools.cached_property
    def recognizers(self) -> list[StreamingRecognizer]:
        """The built-in recognizers, then one per category."""
        return [
            *shared_default_recognizers(),
            *(TermListRecognizer(name, terms) for name, terms in sorted(self.categories.items())),
        ]

    def _sections(self, tenant: str, model: str) -> list[PolicySection]:
        return [
            s
            for s in (self.default, self.models.get(model), self.tenants.get(tenant))
            if s is not None
        ]

    def policy(self, tenant: str = "", model: str = "") -> Policy:
        """The effective response policy of a (tenant, model) turn."""
        default_action: Action = "redact"
        actions: dict[str, Action] = {}
        domains: set[str] = set()
        values: set[str] = set()
        for section in self._sections(tenant, model):
            actions.update(section.actions)
            default_action = section.default_action or default_action
            domains.update(section.allow.domains)
            values.update(allow_key(v) for v in section.allow.values)
        key = hmac.new(self.hash_secret.encode(), tenant.encode(), hashlib.sha256).digest()
        return Policy(
            actions=actions,
            default=default_action,
            tenant_key=key,
            allow_domains=frozenset(domains),
            allow_values=frozenset(values),
        )

    def prompt_mode(self, tenant: str = "", model: str = "") -> PromptMode:
        mode: PromptMode = "redact"
        for section in self._sections(tenant, model):
            mode = section.prompt or mode
        return mode


def load_safety_config(path: Path | None) -> SafetyConfig:
    """The policy file at `path`; None: the built-in default (redact everything found)."""
    if path is None:
        return SafetyConfig.model_validate({})
    return load_config(path, SafetyConfig)
