"""The xDS control plane: snapshots, the cache, and the ADS protocol against a fake Envoy.

The fake ADS client talks to a real grpc.aio server on port 0 and checks the protocol
invariants Envoy relies on (a fresh nonce per response, push order, no resend after a NACK).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import REGISTRY

from services.common import headers
from services.common.server import MAX_REQUEST_BODY_BYTES
from services.router.xds import resources
from services.router.xds.builder import (
    ROUTER_FAILED_STATUS,
    SAFETY_FAILED_STATUS,
    Endpoint,
    MeshSpec,
    PoolSpec,
    SafetySpec,
    build_snapshot,
)
from services.router.xds.cache import Hooks, SnapshotCache
from services.router.xds.server import add_to_server
from services.router.xds.snapshot import InconsistentSnapshotError, Snapshot

CDS, EDS, LDS, RDS = resources.CLUSTER, resources.ENDPOINT, resources.LISTENER, resources.ROUTE

# -- factories ------------------------------------------------------------------------------


def make_spec(engines: dict[str, int] | None = None, **overrides: Any) -> MeshSpec:
    """A mesh with pools `engines` = {pool: number of engines}; engine i of pool p is p-i."""
    engines = {"small": 1} if engines is None else engines
    specs = tuple(
        PoolSpec(
            name,
            tuple(Endpoint(f"{name}-{i}", "127.0.0.1", 9000 + 10 * n + i) for i in range(count)),
        )
        for n, (name, count) in enumerate(sorted(engines.items()))
    )
    fields: dict[str, Any] = {
        "listener_address": "127.0.0.1",
        "listener_port": 8080,
        "router_host": "127.0.0.1",
        "router_port": 50051,
        "pools": specs,
    }
    fields.update(overrides)
    return MeshSpec(**fields)


def make_snapshot(engines: dict[str, int] | None = None, **overrides: Any) -> Snapshot:
    return build_snapshot(make_spec(engines, **overrides))


def eds_cluster(name: str) -> Any:
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)


def rds_listener(name: str, route_config: str) -> Any:
    hcm = hcm_pb2.HttpConnectionManager(rds=hcm_pb2.Rds(route_config_name=route_config))
    listener = listener_pb2.Listener(name=name)
    listener.filter_chains.add().filters.add(name="hcm").typed_config.Pack(hcm)
    return listener


# -- snapshots ------------------------------------------------------------------------------


def test_built_snapshot_is_consistent_and_complete() -> None:
    snap = make_snapshot({"small": 2, "large": 1})
    assert snap.consistency_errors() == []
    assert set(snap.resources(CDS)) == {"switchyard_router", "pool_small", "pool_large"}
    assert set(snap.resources(EDS)) == {"pool_small", "pool_large"}
    assert set(snap.resources(LDS)) == {"switchyard_ingress"}
    assert set(snap.resources(RDS)) == {"switchyard_routes"}


def _filters(snap: Snapshot) -> list[tuple[str, Any]]:
    from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2

    listener = snap.resources(LDS)["switchyard_ingress"]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    out = []
    for f in hcm.http_filters:
        cfg: Any = None
        if f.typed_config.Is(ext_proc_pb2.ExternalProcessor.DESCRIPTOR):
            cfg = ext_proc_pb2.ExternalProcessor()
            f.typed_config.Unpack(cfg)
        out.append((f.name, cfg))
    return out


def test_safety_filter_after_the_router_streams_the_response_and_fails_closed() -> None:
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm

    snap = make_snapshot(safety=SafetySpec("127.0.0.1", 50055))
    assert snap.consistency_errors() == []
    assert "switchyard_safety" in snap.resources(CDS)
    filters = _filters(snap)
    assert [name for name, _ in filters] == [
        "switchyard.router",
        "switchyard.safety",
        "envoy.filters.http.router",
    ]
    router, safety = filters[0][1], filters[1][1]
    assert router.processing_mode.response_body_mode == pm.ProcessingMode.NONE
    assert safety.grpc_service.envoy_grpc.cluster_name == "switchyard_safety"
    # Nothing of the request (the router applies the prompt policy): the stream opens at the
    # response headers, which bring the request headers it reads as attributes.
    assert safety.processing_mode.request_header_mode == pm.ProcessingMode.SKIP
    assert safety.processing_mode.request_body_mode == pm.ProcessingMode.NONE
    assert safety.processing_mode.response_header_mode == pm.ProcessingMode.SEND
    assert safety.processing_mode.response_body_mode == pm.ProcessingMode.STREAMED
    assert "request.headers['x-switchyard-model']" in safety.response_attributes
    assert not safety.request_attributes
    assert not safety.failure_mode_allow and safety.status_on_error.code == SAFETY_FAILED_STATUS
    assert router.status_on_error.code == ROUTER_FAILED_STATUS
    open_ = _filters(make_snapshot(safety=SafetySpec("127.0.0.1", 50055, fail_open=True)))
    assert open_[1][1].failure_mode_allow
    assert [name for name, _ in _filters(make_snapshot())] == [
        "switchyard.router",
        "envoy.filters.http.router",
    ]


def test_openai_turns_take_their_pools_http_route_with_grpc_wire_headers() -> None:
    from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm

    snap = make_snapshot(safety=SafetySpec("127.0.0.1", 50055))
    routes = snap.resources(RDS)["switchyard_routes"].virtual_hosts[0].routes
    # Before the pool's gRPC route (which would match it too), after the response cache's.
    assert [r.name for r in routes] == [
        "response_cache_openai",
        "response_cache",
        "pool_small_openai",
        "pool_small",
        "no_pool_selected",
    ]
    http, grpc_route = routes[2], routes[3]
    assert http.route.cluster == grpc_route.route.cluster == "pool_small"
    assert http.route.retry_policy == grpc_route.route.retry_policy
    assert [(m.name, m.present_match) for m in http.match.headers][1] == (headers.OPENAI, True)
    assert http.route.regex_rewrite.substitution == "/switchyard.v1.Inference/Generate"
    added = {o.header.key: o.header.value for o in http.request_headers_to_add}
    assert added == {"content-type": "application/grpc", "te": "trailers"}
    per_route = ext_proc_pb2.ExtProcPerRoute()
    http.typed_per_filter_config["switchyard.safety"].Unpack(per_route)
    mode = per_route.overrides.processing_mode
    assert mode.response_body_mode == pm.ProcessingMode.FULL_DUPLEX_STREAMED
    assert mode.response_header_mode == mode.response_trailer_mode == pm.ProcessingMode.SEND
    assert mode.request_body_mode == pm.ProcessingMode.NONE
    assert mode.request_header_mode == pm.ProcessingMode.SKIP
    # Without a safety filter nothing writes OpenAI's format: HTTP turns are refused.
    bare = make_snapshot().resources(RDS)["switchyard_routes"].virtual_hosts[0].routes
    assert bare[0].name == "openai_without_safety"
    assert bare[0].direct_response.status == 501


def test_response_cache_hits_go_to_the_routers_replay_through_every_filter() -> None:
    snap = make_snapshot(safety=SafetySpec("127.0.0.1", 50055))
    routes = {r.name: r for r in snap.resources(RDS)["switchyard_routes"].virtual_hosts[0].routes}
    hit = routes["response_cache"]
    assert [(m.name, m.string_match.exact) for m in hit.match.headers] == [
        (headers.CACHE, headers.CACHE_HIT)
    ]
    assert hit.route.cluster == "switchyard_router"
    assert not hit.route.HasField("retry_policy")  # a replay has nowhere else to go
    http = routes["response_cache_openai"]
    assert http.route.cluster == "switchyard_router"
    assert http.route.regex_rewrite.substitution == "/switchyard.v1.Inference/Generate"
    assert "switchyard.safety" in http.typed_per_filter_config


def test_local_replies_to_http_clients_are_openai_errors() -> None:
    snap = make_snapshot(safety=SafetySpec("127.0.0.1", 50055))
    listener = snap.resources(LDS)["switchyard_ingress"]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    mappers = hcm.local_reply_config.mappers
    # First (the first match wins): the mesh's own HTTP answers pass untouched.
    assert _cel(mappers[0].filter).endswith("&& response.code_details.startsWith('switchyard_')")
    assert not mappers[0].HasField("body_format_override") and not mappers[0].status_code.value
    http = [m for m in mappers if m.body_format_override.HasField("json_format")]
    assert len(http) == 6  # 413, router failed, safety failed, late, 431, anything else
    # Then Envoy's own replies to HTTP clients, before the gRPC mappers.
    assert list(mappers[1 : 1 + len(http)]) == http
    for m in http:
        expression = _cel(m.filter)
        assert "request.path.startsWith('/v1/')" in expression
        assert "!response.code_details.startsWith('switchyard_')" in expression
        error = m.body_format_override.json_format["error"]
        assert error["message"] == "%LOCAL_REPLY_BODY%"
        assert m.body_format_override.content_type == "application/json"
    too_large = next(m for m in http if "response.code == 413" in _cel(m.filter))
    assert too_large.body_format_override.json_format["error"]["type"] == "invalid_request_error"


def _cel(f: Any) -> str:
    from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2

    expression = cel_pb2.ExpressionFilter()
    f.extension_filter.typed_config.Unpack(expression)
    return str(expression.expression)


def test_missing_load_assignment_is_an_error() -> None:
    snap = Snapshot.of(clusters=[eds_cluster("pool_a")])
    assert snap.consistency_errors() == ["cluster 'pool_a' uses EDS 'pool_a', which is missing"]
    with pytest.raises(InconsistentSnapshotError, match="pool_a"):
        snap.check_consistent()


def test_missing_route_configuration_is_an_error() -> None:
    snap = Snapshot.of(listeners=[rds_listener("in", "routes")])
    [error] = snap.consistency_errors()
    assert "listener 'in'" in error and "'routes'" in error


def test_dangling_resources_are_fine() -> None:
    snap = Snapshot.of(
        endpoints=[endpoint_pb2.ClusterLoadAssignment(cluster_name="unused")],
        routes=[route_pb2.RouteConfiguration(name="unused")],
    )
    snap.check_consistent()


def test_duplicate_and_misfiled_resources_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Snapshot.of(clusters=[eds_cluster("a"), eds_cluster("a")])
    with pytest.raises(ValueError, match="listed under"):
        Snapshot({CDS: [route_pb2.RouteConfiguration(name="r")]})


def test_versions_are_content_hashes_stable_per_type() -> None:
    one, again = make_snapshot({"small": 1, "large": 1}), make_snapshot({"large": 1, "small": 1})
    assert all(one.version(t) == again.version(t) for t in resources.PUSH_ORDER)
    more = make_snapshot({"small": 2, "large": 1})
    changed = {t for t in resources.PUSH_ORDER if more.version(t) != one.version(t)}
    assert changed == {EDS}
    new_pool = make_snapshot({"small": 1, "large": 1, "tiny": 1})
    changed = {t for t in resources.PUSH_ORDER if new_pool.version(t) != one.version(t)}
    assert changed == {CDS, EDS, RDS}


def test_draining_endpoint_and_engine_metadata() -> None:
    spec = make_spec(pools=(PoolSpec("p", (Endpoint("e1", "10.0.0.1", 7, draining=True),)),))
    cla = build_snapshot(spec).resources(EDS)["pool_p"]
    [lb] = cla.endpoints[0].lb_endpoints
    assert lb.health_status == health_check_pb2.DRAINING
    assert lb.endpoint.hostname == "e1"
    assert lb.metadata.filter_metadata[headers.METADATA_NAMESPACE]["engine_id"] == "e1"


def test_a_silent_engine_is_unhealthy_in_eds() -> None:
    spec = make_spec(pools=(PoolSpec("p", (Endpoint("e1", "10.0.0.1", 7, healthy=False),)),))
    [lb] = build_snapshot(spec).resources(EDS)["pool_p"].endpoints[0].lb_endpoints
    assert lb.health_status == health_check_pb2.UNHEALTHY


def _hcm(snap: Snapshot) -> Any:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    [listener] = snap.resources(LDS).values()
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_local_replies_always_say_what_happened() -> None:
    mappers = _hcm(make_snapshot()).local_reply_config.mappers
    by_status = {m.filter.status_code_filter.comparison.value.default_value: m for m in mappers}
    too_big = by_status[413]
    assert [(h.header.key, h.header.value) for h in too_big.headers_to_add] == [
        ("grpc-status", "8")  # RESOURCE_EXHAUSTED: no HTTP status maps to it
    ]
    assert str(MAX_REQUEST_BODY_BYTES) in too_big.body.inline_string
    for status, who in ((ROUTER_FAILED_STATUS, "router"), (SAFETY_FAILED_STATUS, "safety")):
        m = by_status[status]
        assert m.status_code.value == 503
        assert [(h.header.key, h.header.value) for h in m.headers_to_add] == [("grpc-status", "14")]
        text = m.body_format_override.text_format_source.inline_string
        assert who in text and "%RESPONSE_CODE_DETAILS%" in text


def test_each_try_gets_the_per_try_timeout_to_be_accepted() -> None:
    snap = build_snapshot(make_spec(per_try_timeout_seconds=4.5))
    routes = snap.resources(RDS)["switchyard_routes"].virtual_hosts[0].routes
    route = next(r for r in routes if r.name == "pool_small")
    policy = route.route.retry_policy
    assert policy.per_try_timeout.ToMilliseconds() == 4500
    assert route.route.timeout.ToMilliseconds() == 0  # the stream itself is never cut


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pools": (PoolSpec("p", (Endpoint("e", "localhost", 1),)),)}, "must be an IP"),
        ({"pools": (PoolSpec("p", ()), PoolSpec("p", ()))}, "listed twice"),
        ({"pools": (PoolSpec("bad name", ()),)}, "must match"),
        ({"listener_port": 0}, "listener_port"),
        ({"ext_proc_timeout_seconds": 0}, "ext_proc_timeout_seconds"),
        ({"per_try_timeout_seconds": 0}, "per_try_timeout_seconds"),
    ],
)
def test_builder_rejects_bad_specs(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_snapshot(make_spec(**overrides))


def test_endpoint_header_format() -> None:
    assert headers.endpoint_address("10.0.0.5", 8000) == "10.0.0.5:8000"
    assert headers.endpoint_address("fd00::5", 80) == "[fd00::5]:80"
    assert headers.endpoint_list(["10.0.0.5:1", "10.0.0.6:2"]) == "10.0.0.5:1,10.0.0.6:2"


# -- the cache ------------------------------------------------------------------------------


def test_cache_refuses_an_inconsistent_snapshot_and_keeps_the_last() -> None:
    cache = SnapshotCache()
    good = make_snapshot()
    cache.set_snapshot(good)
    with pytest.raises(InconsistentSnapshotError, match="missing"):
        cache.set_snapshot(Snapshot.of(clusters=[eds_cluster("pool_x")]))
    assert cache.snapshot is good


def test_cache_forgets_the_oldest_disconnected_nodes() -> None:
    from services.router.xds.cache import MAX_DISCONNECTED_NODES

    cache = SnapshotCache()
    cache.stream_opened("live")
    for i in range(MAX_DISCONNECTED_NODES + 10):
        cache.stream_opened(f"gone-{i}")
        cache.record_sent(f"gone-{i}", CDS, "v1", "1")
        cache.stream_closed(f"gone-{i}")
    nodes = [n.node_id for n in cache.status()]
    assert len(nodes) == MAX_DISCONNECTED_NODES + 1 and "live" in nodes
    assert "gone-0" not in nodes and f"gone-{MAX_DISCONNECTED_NODES + 9}" in nodes


def test_cache_wakes_watchers_until_cancelled() -> None:
    cache = SnapshotCache()
    woken: list[int] = []
    cancel = cache.watch(lambda: woken.append(1))
    cache.set_snapshot(make_snapshot())
    cancel()
    cache.set_snapshot(make_snapshot())
    assert woken == [1]


# -- ADS against a fake Envoy ---------------------------------------------------------------


@dataclass
class Recorder:
    """Hooks that keep what they saw."""

    events: list[tuple[str, int, Any]] = field(default_factory=list)

    def hooks(self) -> Hooks:
        return Hooks(
            on_stream_open=lambda sid: self.events.append(("open", sid, None)),
            on_stream_closed=lambda sid, node: self.events.append(("closed", sid, node)),
            on_request=lambda sid, req: self.events.append(("request", sid, req.type_url)),
            on_response=lambda sid, resp: self.events.append(("response", sid, resp.type_url)),
        )

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


class FakeEnvoy:
    """An ADS client that checks the server's protocol invariants as it reads."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.node_id = node_id
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.first = True
        self.nonces: set[str] = set()
        # Read in the background: cancelling a pending call.read() would cancel the RPC.
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for resp in self.call:
                self.inbox.put_nowait(resp)
        except grpc.aio.AioRpcError:
            pass  # the test or the server ended the stream

    async def request(
        self,
        type_url: str,
        names: Sequence[str] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if self.first:  # set_node_on_first_message_only
            req.node.id, self.first = self.node_id, False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def subscribe_all(self) -> None:
        await self.request(LDS)
        await self.request(CDS)
        await self.request(RDS, ["switchyard_routes"])
        await self.request(EDS, ["pool_small"])

    async def ack(self, resp: Any, names: Sequence[str] | None = None) -> None:
        await self.request(resp.type_url, names or self.names(resp), version=resp.version_info,
                           nonce=resp.nonce)  # fmt: skip

    async def nack(self, resp: Any, kept_version: str, error: str) -> None:
        await self.request(resp.type_url, self.names(resp), version=kept_version,
                           nonce=resp.nonce, error=error)  # fmt: skip

    @staticmethod
    def names(resp: Any) -> list[str]:
        if resp.type_url in resources.WILDCARD_TYPES:
            return []
        field_name = "cluster_name" if resp.type_url == EDS else "name"
        return [getattr(unpack(any_), field_name) for any_ in resp.resources]

    async def read(self, count: int = 1, timeout: float = 2.0) -> list[Any]:
        out = []
        for _ in range(count):
            resp = await asyncio.wait_for(self.inbox.get(), timeout)
            assert resp.nonce and resp.nonce not in self.nonces, "nonce reused"
            assert resp.type_url in resources.PUSH_ORDER
            assert all(r.type_url == resp.type_url for r in resp.resources)
            self.nonces.add(resp.nonce)
            out.append(resp)
        return out

    async def read_nothing(self, timeout: float = 0.2) -> None:
        with pytest.raises(TimeoutError):
            resp = await asyncio.wait_for(self.inbox.get(), timeout)
            pytest.fail(f"unexpected response {resp.type_url} {resp.version_info}")

    async def close(self) -> None:
        await self.call.done_writing()

    def cancel(self) -> None:
        self.reader.cancel()
        self.call.cancel()


def unpack(resource: Any) -> Any:
    cls = {
        CDS: cluster_pb2.Cluster,
        EDS: endpoint_pb2.ClusterLoadAssignment,
        LDS: listener_pb2.Listener,
        RDS: route_pb2.RouteConfiguration,
    }[resource.type_url]
    msg = cls()
    resource.Unpack(msg)
    return msg


@dataclass
class Ads:
    cache: SnapshotCache
    recorder: Recorder
    channel: grpc.aio.Channel
    envoys: list[FakeEnvoy] = field(default_factory=list)

    def envoy(self, node_id: str = "node-1") -> FakeEnvoy:
        self.envoys.append(FakeEnvoy(self.channel, node_id))
        return self.envoys[-1]

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}; status: {self.cache.status()}")
            await asyncio.sleep(0.01)

    def type_status(self, node_id: str, type_url: str) -> Any:
        node = self.cache.node_status(node_id)
        return node.type(type_url) if node else None


@pytest.fixture
async def ads() -> AsyncIterator[Ads]:
    cache, recorder = SnapshotCache(), Recorder()
    server = grpc.aio.server()
    add_to_server(server, cache, recorder.hooks())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ads = Ads(cache, recorder, channel)
        yield ads
        for envoy in ads.envoys:
            envoy.cancel()
    await server.stop(None)


async def test_initial_subscription_gets_every_type_in_push_order(ads: Ads) -> None:
    envoy = ads.envoy()
    await envoy.subscribe_all()  # in Envoy's order: LDS, CDS, RDS, EDS
    await ads.until(lambda: ads.recorder.kinds().count("request") == 4, "requests in")
    await envoy.read_nothing()  # no snapshot yet: nothing to say
    snap = make_snapshot()
    ads.cache.set_snapshot(snap)
    got = await envoy.read(4)
    assert [r.type_url for r in got] == [CDS, EDS, LDS, RDS]
    assert [r.version_info for r in got] == [snap.version(t) for t in (CDS, EDS, LDS, RDS)]
    assert sorted(unpack(r).name for r in got[0].resources) == ["pool_small", "switchyard_router"]
    status = ads.cache.node_status("node-1")
    assert status is not None and status.streams == 1
    assert [t.type_url for t in status.types] == [CDS, EDS, LDS, RDS]
    assert all(t.version_sent and not t.version_acked for t in status.types)


async def test_ack_records_the_version_acked(ads: Ads) -> None:
    snap = make_snapshot()
    ads.cache.set_snapshot(snap)
    envoy = ads.envoy()
    await envoy.request(CDS)
    [cds] = await envoy.read()
    await envoy.ack(cds)
    await ads.until(
        lambda: ads.type_status("node-1", CDS).version_acked == snap.version(CDS), "CDS acked"
    )
    status = ads.type_status("node-1", CDS)
    assert (status.version_sent, status.nonce, status.nacked) == (
        snap.version(CDS),
        cds.nonce,
        False,
    )
    await envoy.read_nothing()  # an ACK is not answered


async def test_nack_records_the_error_and_is_not_resent(ads: Ads) -> None:
    first = make_snapshot()
    ads.cache.set_snapshot(first)
    envoy = ads.envoy()
    await envoy.request(CDS)
    [good] = await envoy.read()
    await envoy.ack(good)
    second = make_snapshot(ext_proc_timeout_seconds=5.0)  # changes the listener only
    third = make_snapshot({"small": 1, "large": 1})  # changes CDS
    ads.cache.set_snapshot(third)
    [bad] = await envoy.read()
    assert bad.version_info == third.version(CDS)
    await envoy.nack(bad, kept_version=good.version_info, error="cluster: no such factory")
    await ads.until(lambda: ads.type_status("node-1", CDS).nacked, "NACK recorded")
    status = ads.type_status("node-1", CDS)
    assert status.error == "cluster: no such factory"
    assert status.version_acked == first.version(CDS)
    assert status.version_sent == third.version(CDS)
    await envoy.read_nothing()  # no resend loop
    ads.cache.set_snapshot(third)  # same content again: still nothing
    await envoy.read_nothing()
    ads.cache.set_snapshot(second)  # CDS differs from the rejected one: sent
    [fixed] = await envoy.read()
    assert fixed.version_info == second.version(CDS) == first.version(CDS)
    await envoy.ack(fixed)
    await ads.until(lambda: not ads.type_status("node-1", CDS).nacked, "NACK cleared")
    assert ads.type_status("node-1", CDS).error == ""
    assert REGISTRY.get_sample_value("switchyard_router_xds_nacks_total", {"type": "cluster"})


async def test_new_snapshot_pushes_only_changed_types_with_new_nonces(ads: Ads) -> None:
    ads.cache.set_snapshot(make_snapshot())
    envoy = ads.envoy()
    await envoy.subscribe_all()
    for resp in await envoy.read(4):
        await envoy.ack(resp)
    before = REGISTRY.get_sample_value("switchyard_router_xds_pushes_total", {"type": "endpoint"})
    ads.cache.set_snapshot(make_snapshot({"small": 3}))  # one more engine: EDS only
    [eds] = await envoy.read()
    assert eds.type_url == EDS and len(unpack(eds.resources[0]).endpoints[0].lb_endpoints) == 3
    await envoy.read_nothing()
    after = REGISTRY.get_sample_value("switchyard_router_xds_pushes_total", {"type": "endpoint"})
    assert after == (before or 0) + 1
    # A new pool changes clusters, endpoints and routes: sent in push order.
    await envoy.ack(eds)
    ads.cache.set_snapshot(make_snapshot({"small": 3, "large": 1}))
    got = await envoy.read(3)
    assert [r.type_url for r in got] == [CDS, EDS, RDS]


async def test_stale_nonce_is_ignored(ads: Ads) -> None:
    ads.cache.set_snapshot(make_snapshot())
    envoy = ads.envoy()
    await envoy.request(CDS)
    [old] = await envoy.read()
    ads.cache.set_snapshot(make_snapshot({"small": 1, "large": 1}))
    [new] = await envoy.read()
    await envoy.nack(old, kept_version="", error="late news")  # answers a superseded nonce
    await envoy.read_nothing()
    assert not ads.type_status("node-1", CDS).nacked
    assert ads.type_status("node-1", CDS).nonce == new.nonce


async def test_eds_sends_only_the_requested_names(ads: Ads) -> None:
    snap = make_snapshot({"small": 1, "large": 2})
    ads.cache.set_snapshot(snap)
    envoy = ads.envoy()
    await envoy.request(EDS, ["pool_large", "pool_unknown"])
    [eds] = await envoy.read()
    assert [unpack(r).cluster_name for r in eds.resources] == ["pool_large"]
    # Same names in the ACK: nothing new. New names, same version: answered.
    await envoy.ack(eds, ["pool_large", "pool_unknown"])
    await envoy.read_nothing()
    await envoy.request(EDS, ["pool_large", "pool_small"], version=eds.version_info,
                        nonce=eds.nonce)  # fmt: skip
    [both] = await envoy.read()
    assert both.version_info == eds.version_info and both.nonce != eds.nonce
    assert sorted(unpack(r).cluster_name for r in both.resources) == ["pool_large", "pool_small"]
    # An empty list unsubscribes from EDS (it is not a wildcard type).
    seen = len(ads.recorder.events)
    await envoy.request(EDS, [], version=both.version_info, nonce=both.nonce)
    await ads.until(lambda: ads.recorder.kinds()[seen:].count("request") >= 1,
                    "the server to take the unsubscribe")  # fmt: skip
    ads.cache.set_snapshot(make_snapshot({"small": 2, "large": 2}))
    await envoy.read_nothing()


async def test_two_nodes_are_tracked_separately(ads: Ads) -> None:
    snap = make_snapshot()
    ads.cache.set_snapshot(snap)
    one, two = ads.envoy("node-1"), ads.envoy("node-2")
    await one.request(LDS)
    await two.request(LDS)
    [l1], [l2] = await one.read(), await two.read()
    assert l1.nonce != l2.nonce
    await one.ack(l1)
    await two.nack(l2, kept_version="", error="listener: address in use")
    await ads.until(
        lambda: (
            ads.type_status("node-2", LDS) is not None and ads.type_status("node-2", LDS).nacked
        ),
        "node-2 NACK",
    )
    await ads.until(lambda: ads.type_status("node-1", LDS).version_acked != "", "node-1 ACK")
    [n1, n2] = ads.cache.status()
    assert (n1.node_id, n2.node_id) == ("node-1", "node-2")
    assert n1.type(LDS).version_acked == snap.version(LDS) and not n1.type(LDS).nacked
    assert n2.type(LDS).version_acked == "" and n2.type(LDS).error == "listener: address in use"
    await one.close()
    await ads.until(lambda: ads.cache.node_status("node-1").streams == 0, "node-1 closed")
    assert ads.cache.node_status("node-2").streams == 1


async def test_hooks_see_streams_requests_and_responses(ads: Ads) -> None:
    ads.cache.set_snapshot(make_snapshot())
    envoy = ads.envoy("node-9")
    await envoy.request(CDS)
    await envoy.read()
    await envoy.close()
    await ads.until(lambda: "closed" in ads.recorder.kinds(), "stream closed")
    assert ads.recorder.kinds() == ["open", "request", "response", "closed"]
    assert ads.recorder.events[-1][2] == "node-9"


async def test_a_failing_hook_does_not_break_the_stream() -> None:
    cache = SnapshotCache()
    cache.set_snapshot(make_snapshot())

    def boom(*_: Any) -> None:
        raise RuntimeError("hook bug")

    server = grpc.aio.server()
    add_to_server(server, cache, Hooks(on_request=boom, on_response=boom))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            envoy = FakeEnvoy(channel, "node-1")
            await envoy.request(CDS)
            [cds] = await envoy.read()
            assert cds.type_url == CDS
    finally:
        await server.stop(None)


async def test_delta_xds_is_unimplemented(ads: Ads) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ads.channel)
    # The server refuses the stream as it opens: a request written then races the refusal (the
    # write can fail INTERNAL on the client), so the call's status is read without writing.
    call = stub.DeltaAggregatedResources()
    assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "state-of-the-world" in await call.details()
