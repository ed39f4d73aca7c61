"""`switchyard.v1.Router` (pick/explain without Envoy) and `switchyard.v1.Admin` (operators)."""

from __future__ import annotations

import time

import grpc

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.pki import ENGINE
from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel
from services.router.auth.authenticator import Authenticator
from services.router.auth.keys import KeyRecord
from services.router.auth.principal import Quotas
from services.router.autoscale import Autoscaler
from services.router.config import MeshConfig, ModelResolver
from services.router.registry import Registry
from services.router.reload import ConfigReloader
from services.router.response_cache import ResponseCache
from services.router.routing import RoutingService, check_request_size
from services.router.tenancy.admission import Admission
from services.router.tenancy.policy import PolicyStore, TenantPolicy, cache_salt
from services.router.versions import Versions
from services.router.xds.cache import SnapshotCache
from switchyard.v1 import engine_pb2, engine_pb2_grpc, router_pb2, router_pb2_grpc


def xds_status(cache: SnapshotCache) -> list[router_pb2.XdsNodeStatus]:
    """Per Envoy node and xDS type: version sent, version ACKed, and the last NACK's error."""
    out = []
    for node in cache.status():
        ns = router_pb2.XdsNodeStatus(node_id=node.node_id)
        for t in node.types:
            ns.types.add(
                type_url=t.type_url,
                version_sent=t.version_sent,
                version_acked=t.version_acked,
                nonce=t.nonce,
                nacked=t.nacked,
                error=t.error,
            )
        out.append(ns)
    return out


class RouterService(router_pb2_grpc.RouterServicer):
    def __init__(self, routing: RoutingService, policies: PolicyStore | None = None) -> None:
        self._routing = routing
        self._policies = policies  # a tenant's cache salt, as the mesh's turns get it

    def add_to_server(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(self, server)

    async def Pick(
        self, request: router_pb2.PickRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.PickResponse:
        check_request_size(request.request.ByteSize(), self._routing.limits)
        salt = ""
        if request.tenant and self._policies is not None:
            salt = cache_salt(request.tenant, self._policies.get(request.tenant))
        decision, rr = await self._routing.route(
            request.request, tenant=request.tenant, commit=request.commit, cache_salt=salt
        )
        resp: router_pb2.PickResponse = decision.to_proto()
        resp.model = rr.model
        resp.prompt_tokens = len(rr.prompt_token_ids)
        resp.cache_salt = salt
        resp.model_version, resp.version_reason = rr.model_version, rr.version_reason
        return resp


def key_proto(rec: KeyRecord) -> router_pb2.ApiKey:
    return router_pb2.ApiKey(
        key_id=rec.key_id,
        name=rec.name,
        tenant=rec.tenant,
        tier=rec.tier,
        models=list(rec.models),
        created=rec.created,
        revoked=rec.revoked,
        quotas=router_pb2.Quotas(**rec.quotas),
    )


QUOTA_FIELDS = tuple(Quotas.model_fields)


# Tenant policy fields SetTenant takes by name (besides `tier` and `quotas.*`).
POLICY_FIELDS = ("weight", "cache_group", "response_cache", "response_cache_ttl_seconds")


def quotas_dict(q: router_pb2.Quotas) -> dict[str, int]:
    """The non-zero fields of a Quotas message (0 means unlimited: not stored)."""
    return {f: getattr(q, f) for f in QUOTA_FIELDS if getattr(q, f)}


def policy_proto(tenant: str, policy: TenantPolicy, source: str) -> router_pb2.TenantPolicy:
    return router_pb2.TenantPolicy(
        tenant=tenant,
        weight=policy.weight,
        tier=policy.tier or "",
        quotas=router_pb2.Quotas(**policy.quotas.model_dump()),
        cache_group=policy.cache_group,
        source=source,
        response_cache=policy.response_cache,
        response_cache_ttl_seconds=policy.response_cache_ttl_seconds,
    )


class AdminService(router_pb2_grpc.AdminServicer):
    """Operators only (the router's access policy): status, drain, API keys, tenants."""

    def __init__(
        self,
        cfg: MeshConfig,
        resolver: ModelResolver,
        registry: Registry,
        xds: SnapshotCache,
        router_id: str,
        auth: Authenticator,
        tls: TlsFiles | None,
        admission: Admission,
        versions: Versions,
    ) -> None:
        self._admission = admission
        self.config = cfg  # the running mesh config (a live reload replaces it)
        self._resolver = resolver
        self._registry = registry
        self._xds = xds
        self._router_id = router_id
        self._auth = auth
        self._tls = tls  # the router's identity, for EngineControl calls
        self.reloader: ConfigReloader | None = None  # the mesh config, reloaded live
        self.versions = versions  # the versioned models the router's routing reads
        self.response_cache: ResponseCache | None = None
        self.autoscaler: Autoscaler | None = None  # each pool's desired engines

    def add_to_server(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_AdminServicer_to_server(self, server)

    def use_resolver(self, resolver: ModelResolver) -> None:
        self._resolver = resolver

    async def ReloadConfig(
        self, request: router_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ReloadConfigResponse:
        if self.reloader is None:
            raise FailedPrecondition("this router does not watch a config file")
        changed = self.reloader.reload()
        return router_pb2.ReloadConfigResponse(source=str(self.reloader.source), changed=changed)

    async def PurgeCache(
        self, request: router_pb2.PurgeCacheRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.PurgeCacheResponse:
        if self.response_cache is None:
            raise FailedPrecondition("the response cache is off (response_cache.enabled)")
        purged = await self.response_cache.purge(request.tenant)
        return router_pb2.PurgeCacheResponse(purged=purged)

    async def SetVersionWeights(
        self, request: router_pb2.SetVersionWeightsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SetVersionWeightsResponse:
        if not request.weights:
            raise InvalidArgument("weights: name at least one version and its weight")
        vm = self.versions.set_weights(request.model, dict(request.weights))
        return router_pb2.SetVersionWeightsResponse(model=vm.to_proto())

    async def Status(
        self, request: router_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.StatusResponse:
        now = time.monotonic()
        resp = router_pb2.StatusResponse(router_id=self._router_id)
        for pool in self.config.pools:
            models = [m.name for m in pool.models]
            ps = resp.pools.add(
                name=pool.name,
                accelerator=pool.accelerator,
                models=models,
                aliases=[a for m in models for a in self._resolver.aliases_of(m)],
            )
            flow = self._admission.flow
            if flow is not None:
                ps.in_flight, ps.queued = flow.in_flight(pool.name), flow.queued(pool=pool.name)
                ps.free_slots = flow.free_slots(pool.name) or 0
                ps.capacity = flow.saturation.pool_capacity(self._registry.routable(pool.name))
            scale = self.autoscaler.last.get(pool.name) if self.autoscaler is not None else None
            if scale is not None:
                ps.desired_engines, ps.scale_reason = scale.desired, scale.reason
            for e in sorted(self._registry.engines(pool.name), key=lambda e: e.engine_id):
                state = self._registry.state_of(e)
                ps.engines.add(
                    engine_id=e.engine_id,
                    endpoint=e.address,
                    model=e.model,
                    model_version=e.model_version,
                    state=state,
                    load=e.load,
                    cache_hit_rate=e.cache_hit_rate,
                    routed_turns=e.routed_turns,
                    indexed_blocks=self._registry.indexed_blocks(e.engine_id),
                    seconds_since_report=now - e.last_report_at,
                )
        resp.xds_nodes.extend(xds_status(self._xds))
        resp.versions.extend(self.versions.to_proto())
        return resp

    async def _control(
        self, engine_id: str
    ) -> tuple[grpc.aio.Channel, engine_pb2_grpc.EngineControlStub]:
        state = self._registry.get(engine_id)
        if state is None:
            known = ", ".join(sorted(e.engine_id for e in self._registry.engines())) or "none"
            raise NotFound(f"engine {engine_id!r} is not registered (engines: {known})")
        channel = tls_channel(state.address, self._tls, peer=ENGINE)
        return channel, engine_pb2_grpc.EngineControlStub(channel)

    async def Drain(
        self, request: router_pb2.AdminDrainRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.AdminDrainResponse:
        channel, stub = await self._control(request.engine_id)
        async with channel:
            try:
                r = await stub.Drain(
                    engine_pb2.DrainRequest(grace_seconds=request.grace_seconds), timeout=10
                )
            except grpc.aio.AioRpcError as e:
                raise Unavailable(f"engine {request.engine_id}: {e.details()}") from None
        return router_pb2.AdminDrainResponse(in_flight=r.in_flight)

    async def Undrain(
        self, request: router_pb2.AdminUndrainRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.AdminUndrainResponse:
        channel, stub = await self._control(request.engine_id)
        async with channel:
            try:
                await stub.Resume(engine_pb2.ResumeRequest(), timeout=10)
            except grpc.aio.AioRpcError as e:
                raise Unavailable(f"engine {request.engine_id}: {e.details()}") from None
        return router_pb2.AdminUndrainResponse()

    async def CreateKey(
        self, request: router_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CreateKeyResponse:
        tiers = self.config.auth.tiers
        tier = request.tier or self.config.auth.default_tier
        if tier not in tiers:
            raise InvalidArgument(f"tier {tier!r} is not one of {', '.join(sorted(tiers))}")
        known = self._resolver.pools()
        for i, model in enumerate(request.models):
            if model not in known:
                raise InvalidArgument(
                    f"models[{i}]: {model!r} is not a model of the mesh "
                    f"({', '.join(sorted(known))})"
                )
        rec, secret = self._auth.keys.create(
            tenant=request.tenant,
            tier=tier,
            models=list(request.models),
            name=request.name,
            quotas=quotas_dict(request.quotas),
        )
        return router_pb2.CreateKeyResponse(key=key_proto(rec), secret=secret)

    async def ListKeys(
        self, request: router_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListKeysResponse:
        return router_pb2.ListKeysResponse(keys=[key_proto(r) for r in self._auth.keys.all()])

    async def RevokeKey(
        self, request: router_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RevokeKeyResponse:
        return router_pb2.RevokeKeyResponse(key=key_proto(self._auth.keys.revoke(request.key_id)))

    async def SetTenant(
        self, request: router_pb2.SetTenantRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SetTenantResponse:
        policies = self._admission.policies
        tenant = request.tenant
        if not tenant:
            raise InvalidArgument("tenant is required")
        if request.reset:
            policies.reset(tenant)
        else:
            fields: dict[str, object] = {}
            quotas: dict[str, int] = {}
            p = request.policy
            for path in request.update:
                name = path.removeprefix("quotas.")
                if path in POLICY_FIELDS:
                    fields[path] = getattr(p, path)
                elif path == "tier":
                    fields["tier"] = p.tier or None
                elif path.startswith("quotas.") and name in QUOTA_FIELDS:
                    quotas[name] = getattr(p.quotas, name)
                else:
                    raise InvalidArgument(
                        f"update: {path!r} is not a tenant policy field (weight, tier, "
                        "cache_group, response_cache, response_cache_ttl_seconds, "
                        f"{', '.join('quotas.' + f for f in QUOTA_FIELDS)})"
                    )
            if quotas:
                fields["quotas"] = quotas
            if not fields:
                raise InvalidArgument("update: name at least one field to change")
            policies.set(tenant, fields)
        return router_pb2.SetTenantResponse(
            policy=policy_proto(tenant, policies.get(tenant), policies.source(tenant))
        )

    async def ListTenants(
        self, request: router_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListTenantsResponse:
        adm = self._admission
        policies = adm.policies
        names = sorted({*policies.all(), *adm.stats})
        resp = router_pb2.ListTenantsResponse(ledger=adm.ledger.name)
        for tenant in names:
            # The counters first, then what the ledger says: a turn that ends meanwhile shows
            # as in flight, never as ended with its refund missing.
            status = resp.tenants.add(
                policy=policy_proto(tenant, policies.get(tenant), policies.source(tenant)),
                queued=adm.queued(tenant),
                waited=adm.waited(tenant),
            )
            st = adm.stats.get(tenant)
            if st is not None:
                status.in_flight = max(0, st.in_flight)
                status.admitted, status.over_quota = st.admitted, st.over_quota
                status.shed, status.tokens = st.shed, st.tokens
            status.remaining.update(await adm.remaining(tenant))
        return resp
