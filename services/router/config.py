"""The mesh's configuration (deploy/local/pools.yaml): pools, the models they serve, aliases, and
where the router and Envoy listen. `switchyard up` also reads which engines to start per pool.

    router: {listen: 127.0.0.1:50051}
    envoy: {listen: 127.0.0.1:8080, admin: 127.0.0.1:9901}
    safety: {listen: 127.0.0.1:50055, config: safety.yaml, fail_open: false}
    default_model: small
    aliases: {chat: small, reasoning: large}
    pools:
      - name: l4-small
        accelerator: l4
        models: [{name: small, tokenizer: ${SWITCHYARD_MODELS}/small}]
        engines: [{config: engine-small.yaml, count: 2}]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic

from services.common.config import StrictModel, load_config
from services.common.errors import NotFound
from services.common.server import MAX_REQUEST_BODY_BYTES
from services.common.tls import TlsConfig
from services.common.tracing import TracingConfig
from services.router.auth.config import AuthSection
from services.router.autoscale import AutoscaleSection
from services.router.fallback import Fallbacks
from services.router.response_cache import ResponseCacheSection
from services.router.saturation import SaturationSection
from services.router.tenancy.admission import QuotaSection
from services.router.tenancy.flow import FlowSection
from services.router.tenancy.policy import TenantsSection
from services.router.tiers import ComplexitySection, PoolCost, Scorer, TierModel, TierSelector
from services.router.versions import VersionsSection


class ModelEntry(StrictModel):
    name: str = pydantic.Field(min_length=1)  # the served model name engines register with
    tokenizer: Path  # a directory with the model's tokenizer (the router tokenizes prompts)
    # The hardest turns a tier may give it (see `tiers`): "easy" ones only, or any.
    handles: Literal["easy", "hard"] = "hard"
    # One version of a model served by several (see `versions`): this pool serves that arm.
    # Empty: the pool serves whatever versions its engines report.
    version: str = ""


class EngineGroup(StrictModel):
    config: Path  # an engine config (YAML), relative to this file
    count: int = pydantic.Field(1, ge=0)  # engines `switchyard up` starts from it
    # The model version these engines report (over the engine config's `model.version`): a
    # canary arm of the same config, e.g. a second engine group with `version: canary`.
    version: str = ""


class PoolConfig(StrictModel):
    name: str = pydantic.Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    accelerator: str = pydantic.Field(min_length=1)
    models: list[ModelEntry] = pydantic.Field(min_length=1)
    engines: list[EngineGroup] = pydantic.Field(default_factory=list)
    # What its tokens cost (tiers choose the cheapest able pool); None: unknown, chosen last.
    cost: PoolCost | None = None


class RouterSection(StrictModel):
    # Registry, Router, Admin, Envoy's ext_proc and the xDS (ADS) server share this address.
    listen: str = "127.0.0.1:50051"
    # Where Envoy reaches the router's ext_proc; defaults to the bound listen address. With
    # several replicas (Kubernetes), their Service: every replica then serves Envoy the same
    # config, so a reconnect to another replica changes nothing.
    advertise_address: str = ""
    metrics_listen: str = "127.0.0.1:0"
    # Plaintext gRPC health only, for probes without a certificate (Kubernetes); "": none.
    health_listen: str = ""
    # An engine silent for this long leaves the routable set (it reports every heartbeat) and
    # comes back on its next report; the router's own stalls do not count as silence.
    stale_after_seconds: float = pydantic.Field(3.0, gt=0)
    heartbeat_seconds: float = pydantic.Field(1.0, gt=0)
    # A request body larger than this is refused with INVALID_ARGUMENT before it is decoded.
    max_prompt_bytes: int = pydantic.Field(4 * 1024 * 1024, ge=1024, lt=MAX_REQUEST_BODY_BYTES)
    # Tokens a turn's input may have; 0: the model's context length is the only limit.
    max_prompt_tokens: int = pydantic.Field(0, ge=0)
    # After the router (re)starts: how long engines get to register before Envoy is sent a
    # config (it keeps its last one meanwhile), and how long a turn for a pool with no engines
    # waits for one instead of failing.
    registration_grace_seconds: float = pydantic.Field(3.0, ge=0)
    # A scheduling profile (plugins and weights); empty uses the default profile.
    profile: dict[str, Any] = pydantic.Field(default_factory=dict)
    # How often the router checks its mesh config file for edits to reload live (aliases,
    # tiers, fallbacks... see services/router/reload.py); 0: only `switchyard admin reload`.
    config_poll_seconds: float = pydantic.Field(2.0, ge=0)


class EnvoySection(StrictModel):
    listen: str = "127.0.0.1:8080"  # the mesh's one endpoint (gRPC and OpenAI HTTP)
    admin: str = "127.0.0.1:9901"
    node_id: str = "switchyard-envoy-0"
    # An engine that has not accepted a turn (sent its response headers) within this long is
    # given up on and the turn retried on the next engine (a frozen engine); a turn that has
    # started streaming is never retried by Envoy.
    per_try_timeout_seconds: float = pydantic.Field(5.0, gt=0)
    # How long Envoy waits for the router's (or the safety filter's) answer to each ext_proc
    # message before failing the turn (UNAVAILABLE); they ask for more when they need it (a
    # long prompt, a turn waiting for a saturated pool), up to 30 s.
    ext_proc_timeout_seconds: float = pydantic.Field(2.0, gt=0, le=30)
    # Where Envoy finds its identity and the mesh's CA, as file-based SDS (`identity.yaml`,
    # `ca.yaml`; services/router/xds/envoy_proc.py writes them); an absolute path as Envoy sees
    # it. `switchyard up` sets it; None with TLS on: "sds" in Envoy's working directory.
    sds_dir: Path | None = None
    # What one client may send. Request headers: more than these (bytes as Envoy forwards them,
    # or headers) are refused by the router with RESOURCE_EXHAUSTED naming the limit; Envoy
    # itself resets a stream whose headers are over 1.5x the size or 2x the count (HTTP/2 has no
    # status for that). Streams: more at once on one connection wait for a slot.
    max_request_headers_kb: int = pydantic.Field(64, ge=1, le=4096)
    max_headers_count: int = pydantic.Field(100, ge=10, le=10_000)
    max_concurrent_streams: int = pydantic.Field(256, ge=1, le=65_536)
    # Envoy's overload manager: client connections past this are closed as they are accepted;
    # past this heap, Envoy stops taking requests ("envoy overloaded", UNAVAILABLE) rather than
    # grow until the machine kills it.
    max_connections: int = pydantic.Field(10_000, ge=1)
    max_heap_mb: int = pydantic.Field(1024, ge=16)


class SafetySection(StrictModel):
    # The safety service (Envoy's second ext_proc: the streamed response scrub) and its policy,
    # whose prompt part the router applies before it routes.
    enabled: bool = True
    listen: str = "127.0.0.1:50055"
    config: Path | None = None  # its policy (YAML), relative to this file; None: built-in default
    # The service down or failing: false fails turns with UNAVAILABLE (never an unscrubbed
    # stream); true lets them through unfiltered.
    fail_open: bool = False


class MeshConfig(StrictModel):
    router: RouterSection = pydantic.Field(default_factory=lambda: RouterSection.model_validate({}))
    envoy: EnvoySection = pydantic.Field(default_factory=lambda: EnvoySection.model_validate({}))
    safety: SafetySection = pydantic.Field(default_factory=lambda: SafetySection.model_validate({}))
    # The router's spans, and Envoy's tracer (which starts every turn's trace) when
    # `otlp_endpoint` is set; `switchyard up` sets it to its local sink or --otlp-endpoint.
    tracing: TracingConfig = pydantic.Field(
        default_factory=lambda: TracingConfig.model_validate({})
    )
    # Who may call the mesh (API keys, JWTs) and what tiers mean.
    auth: AuthSection = pydantic.Field(default_factory=lambda: AuthSection.model_validate({}))
    # Where the quota ledger lives (the router, or Redis shared by replicas) and how it fails.
    quotas: QuotaSection = pydantic.Field(default_factory=lambda: QuotaSection.model_validate({}))
    # Each tenant's quotas, fair-share weight, tier override and cache group (defaults; the
    # admin API changes them live).
    tenants: TenantsSection = pydantic.Field(
        default_factory=lambda: TenantsSection.model_validate({})
    )
    # When a pool counts as saturated (per-engine capacity by accelerator, KV-cache usage), and
    # the fair-share flow control that holds turns in the router while it is.
    saturation: SaturationSection = pydantic.Field(
        default_factory=lambda: SaturationSection.model_validate({})
    )
    flow: FlowSection = pydantic.Field(default_factory=lambda: FlowSection.model_validate({}))
    # Mutual TLS between the mesh's services: the router's identity and the CA (default: the
    # local PKI); `plaintext: true` turns it off everywhere (loudly).
    tls: TlsConfig = pydantic.Field(default_factory=lambda: TlsConfig.model_validate({}))
    pools: list[PoolConfig] = pydantic.Field(min_length=1)
    default_model: str = ""  # what "" and "auto" resolve to; defaults to the first pool's model
    aliases: dict[str, str] = pydantic.Field(default_factory=dict)  # alias -> model name
    # Tiered names (e.g. "auto") → the models each may choose per turn: the cheapest able to
    # serve it (see services/router/tiers.py), scored by `complexity`.
    tiers: dict[str, list[str]] = pydantic.Field(default_factory=dict)
    complexity: ComplexitySection = pydantic.Field(
        default_factory=lambda: ComplexitySection.model_validate({})
    )
    # Model → the model a saturated (or engineless) one degrades to, for tiers that degrade
    # (auth.tiers.<tier>.degrade; see services/router/fallback.py).
    fallbacks: dict[str, str] = pydantic.Field(default_factory=dict)
    # Model → its versions (canary and A/B arms) by weight, sticky per session, with an
    # optional automatic rollback (see services/router/versions.py).
    versions: dict[str, VersionsSection] = pydantic.Field(default_factory=dict)
    # Deterministic turns asked again, answered without an engine (see
    # services/router/response_cache.py); in Redis when `quotas.redis_url` is set.
    response_cache: ResponseCacheSection = pydantic.Field(
        default_factory=lambda: ResponseCacheSection.model_validate({})
    )
    # How many engines each pool should have by its load (services/router/autoscale.py).
    autoscale: AutoscaleSection = pydantic.Field(
        default_factory=lambda: AutoscaleSection.model_validate({})
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> MeshConfig:
        seen_pools: set[str] = set()
        models: dict[str, str] = {}  # model → its (unversioned, else first) pool
        served: dict[tuple[str, str], str] = {}  # (model, version or "") → pool
        for i, pool in enumerate(self.pools):
            if pool.name in seen_pools:
                raise ValueError(f"pools[{i}].name: pool {pool.name!r} is defined twice")
            seen_pools.add(pool.name)
            for j, m in enumerate(pool.models):
                if (m.name, m.version) in served:
                    which = f"version {m.version!r} of " if m.version else ""
                    raise ValueError(
                        f"pools[{i}].models[{j}]: {which}model {m.name!r} is already served by "
                        f"pool {served[(m.name, m.version)]!r}; a model name belongs to one pool "
                        "(or give each pool's entry its own `version`)"
                    )
                served[(m.name, m.version)] = pool.name
                if not m.version or m.name not in models:
                    models[m.name] = pool.name
                section = self.versions.get(m.name)
                if m.version and (section is None or m.version not in section.weights):
                    raise ValueError(
                        f"pools[{i}].models[{j}].version: {m.version!r} is not one of "
                        f"versions.{m.name}.weights"
                    )
        for model, section in self.versions.items():
            if model not in models:
                raise ValueError(f"versions.{model}: {model!r} is not a model of any pool")
            for version in section.weights:
                if (model, version) not in served and (model, "") not in served:
                    raise ValueError(
                        f"versions.{model}.weights.{version}: no pool serves it (give a pool's "
                        f"model entry `version: {version}`, or serve {model!r} unversioned)"
                    )
        for alias, target in self.aliases.items():
            if target not in models:
                raise ValueError(f"aliases.{alias}: {target!r} is not a model of any pool")
            if alias in models:
                raise ValueError(f"aliases.{alias}: an alias may not shadow a model name")
        for tenant, policy in self.tenants.policies.items():
            if policy.tier is not None and policy.tier not in self.auth.tiers:
                raise ValueError(
                    f"tenants.policies.{tenant}.tier: {policy.tier!r} is not one of auth.tiers "
                    f"({', '.join(sorted(self.auth.tiers))})"
                )
        handles = {m.name: m.handles for p in self.pools for m in p.models}
        for name, chosen in self.tiers.items():
            where = f"tiers.{name}"
            if name in models or name in self.aliases:
                raise ValueError(f"{where}: a tiered name may not shadow a model or an alias")
            if not chosen:
                raise ValueError(f"{where}: name at least one model")
            for name_ in chosen:
                if name_ not in models:
                    raise ValueError(f"{where}: {name_!r} is not a model of any pool")
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"{where}: a model is named twice")
            if all(handles[n] == "easy" for n in chosen):
                raise ValueError(f"{where}: none of its models handles hard turns")
        for model, target in self.fallbacks.items():
            for name_ in (model, target):
                if name_ not in models:
                    raise ValueError(f"fallbacks.{model}: {name_!r} is not a model of any pool")
            if models[model] == models[target]:
                raise ValueError(
                    f"fallbacks.{model}: {target!r} is served by the same pool "
                    f"({models[model]}): it would be just as full"
                )
        for name in self.autoscale.pools:
            if name not in seen_pools:
                raise ValueError(f"autoscale.pools.{name}: {name!r} is not a pool")
        if self.default_model and self.default_model not in models:
            raise ValueError(f"default_model: {self.default_model!r} is not a model of any pool")
        return self

    def resolve_paths(self, base: Path) -> MeshConfig:
        pools = []
        for p in self.pools:
            models = [m.model_copy(update={"tokenizer": _abs(base, m.tokenizer)}) for m in p.models]
            engines = [e.model_copy(update={"config": _abs(base, e.config)}) for e in p.engines]
            pools.append(p.model_copy(update={"models": models, "engines": engines}))
        update: dict[str, Any] = {"pools": pools}
        auth = self.auth
        if auth.keys_file is not None:
            auth = auth.model_copy(update={"keys_file": _abs(base, auth.keys_file.expanduser())})
        if auth.jwt is not None and auth.jwt.jwks_file is not None:
            jwt = auth.jwt.model_copy(update={"jwks_file": _abs(base, auth.jwt.jwks_file)})
            auth = auth.model_copy(update={"jwt": jwt})
        update["auth"] = auth
        if self.tenants.file is not None:
            update["tenants"] = self.tenants.model_copy(
                update={"file": _abs(base, self.tenants.file.expanduser())}
            )
        if self.safety.config is not None:
            update["safety"] = self.safety.model_copy(
                update={"config": _abs(base, self.safety.config.expanduser())}
            )
        tls = {k: _abs(base, v.expanduser()) for k in ("ca", "cert", "key", "pki_dir")
               if (v := getattr(self.tls, k)) is not None}  # fmt: skip
        update["tls"] = self.tls.model_copy(update=tls)
        return self.model_copy(update=update)


def _abs(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def primary_entries(cfg: MeshConfig) -> dict[str, tuple[PoolConfig, ModelEntry]]:
    """Each model's pool and entry as tiers, fallbacks and aliases see it: the pool serving it
    unversioned, else the first naming one of its versions."""
    out: dict[str, tuple[PoolConfig, ModelEntry]] = {}
    for p in cfg.pools:
        for m in p.models:
            if not m.version or m.name not in out:
                out[m.name] = (p, m)
    return out


def version_pool(cfg: MeshConfig, model: str, version: str) -> str:
    """The pool serving `version` of `model`: the pool naming that version, else the pool
    serving the model unversioned."""
    fallback = ""
    for p in cfg.pools:
        for m in p.models:
            if m.name == model and m.version == version:
                return p.name
            if m.name == model and not m.version:
                fallback = p.name
    return fallback


class ModelResolver:
    """Model name, alias, "" or "auto" → (pool, served model name)."""

    def __init__(self, cfg: MeshConfig) -> None:
        self._pool_of = {name: p.name for name, (p, _) in primary_entries(cfg).items()}
        self._aliases = dict(cfg.aliases)
        self._tiers = {name: list(models) for name, models in cfg.tiers.items()}
        self.default_model = cfg.default_model or cfg.pools[0].models[0].name

    def resolve(self, requested: str) -> tuple[str, str]:
        model = requested or "auto"
        if model == "auto":
            model = self.default_model
        model = self._aliases.get(model, model)
        pool = self._pool_of.get(model)
        if pool is None:
            known = ", ".join(sorted(self._pool_of))
            aliases = ", ".join(sorted(self._aliases)) or "none"
            tiers = f"; tiers: {', '.join(sorted(self._tiers))}" if self._tiers else ""
            raise NotFound(
                f"model {requested!r} is unknown (models: {known}; aliases: {aliases}{tiers}; "
                "or 'auto')"
            )
        return pool, model

    def pools(self) -> dict[str, str]:
        return dict(self._pool_of)

    def aliases_of(self, model: str) -> list[str]:
        return sorted(a for a, m in self._aliases.items() if m == model)

    def tiers(self) -> dict[str, list[str]]:
        """Tiered names → the models each may choose."""
        return dict(self._tiers)


def tier_selector(cfg: MeshConfig) -> TierSelector:
    """The mesh's tiered names, their models priced by their pools' cost."""
    entries = primary_entries(cfg)
    tiers: dict[str, list[TierModel]] = {}
    for name, chosen in cfg.tiers.items():
        tiers[name] = []
        for model in chosen:
            pool, entry = entries[model]
            cost = pool.cost.per_million_tokens() if pool.cost is not None else None
            tiers[name].append(TierModel(model, pool.name, entry.handles, cost))
    return TierSelector(tiers, Scorer(cfg.complexity))


def fallbacks(cfg: MeshConfig) -> Fallbacks:
    pool_of = {name: p.name for name, (p, _) in primary_entries(cfg).items()}
    degrading = [name for name, t in cfg.auth.tiers.items() if t.degrade]
    return Fallbacks(cfg.fallbacks, pool_of, degrading)


def load_mesh_config(path: str | Path) -> MeshConfig:
    p = Path(path)
    return load_config(p, MeshConfig).resolve_paths(p.parent.resolve())
