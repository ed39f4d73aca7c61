"""Envoy's whole dynamic config, built from a plain description of the mesh.

    snap = build_snapshot(MeshSpec("127.0.0.1", 8080, "127.0.0.1", 50051, pools=(
        PoolSpec("small", (Endpoint("small-0", "127.0.0.1", 50061),)),
    )))

What it builds (names are constants below):

- Listener `switchyard_ingress` on the gRPC ingress: HTTP connection manager (HTTP/1 or 2, so
  gRPC) with routes from RDS over ADS, and three HTTP filters: ext_proc to the router (request
  headers + buffered body; nothing of the response), ext_proc to the safety service (nothing
  of the request; the response headers and the STREAMED response body for the scrub; fails
  closed unless told otherwise), then the router. Its local replies always carry a
  message and the right gRPC status (`_local_replies`): a body over the transport limit is
  RESOURCE_EXHAUSTED, a router or safety service that does not answer is UNAVAILABLE saying
  which and why; to an HTTP client (an `/v1/` path or an OpenAI turn) the same replies are
  OpenAI error objects (`_http_local_replies`).
- RouteConfiguration `switchyard_routes`: per pool, header `x-switchyard-pool` == name →
  cluster `pool_<name>`, no route timeout (streams), retries only before the first response
  byte, each try given `per_try_timeout_seconds` to be accepted (an engine sends its response
  headers as it takes a turn, so a frozen engine's turn moves on); last, a catch-all answering
  gRPC UNAVAILABLE "no pool selected". Before them, per pool, the route of OpenAI HTTP turns
  (`pool_<name>_openai`: the router also set `x-switchyard-openai`): the same cluster and
  retries, gRPC's wire headers toward the engine (`:path` Generate, `content-type:
  application/grpc`, `te: trailers`; set by the route, after every filter, so that each
  filter's own refusals of the turn are still HTTP answers), and the safety filter switched to
  FULL_DUPLEX_STREAMED with response headers and trailers (it rewrites gRPC frames into SSE
  or JSON, holding headers and writing at the trailers as it needs).
- Cluster `pool_<name>` per pool: EDS over ADS, HTTP/2, load balancing by
  `envoy.load_balancing_policies.override_host` reading `x-switchyard-endpoint` (fallback
  least_request), gRPC health checks, outlier detection and circuit breakers.
- Clusters `switchyard_router`, `switchyard_safety`: our ext_proc gRPC servers, endpoints inline.
- ClusterLoadAssignment `pool_<name>`: one endpoint per engine (engine id as hostname and in
  metadata); a draining engine has health_status DRAINING: no new turns, its streams go on; a
  silent (stale) one UNHEALTHY until it reports again.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# xds-protos ships no type stubs: its modules are untyped (Any) to mypy.
from envoy.config.accesslog.v3 import (  # type: ignore[import-untyped,unused-ignore]
    accesslog_pb2,
)
from envoy.config.cluster.v3 import (  # type: ignore[import-untyped,unused-ignore]
    circuit_breaker_pb2,
    cluster_pb2,
    outlier_detection_pb2,
)
from envoy.config.common.mutation_rules.v3 import (  # type: ignore[import-untyped,unused-ignore]
    mutation_rules_pb2,
)
from envoy.config.core.v3 import (  # type: ignore[import-untyped,unused-ignore]
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import (  # type: ignore[import-untyped,unused-ignore]
    endpoint_components_pb2,
    endpoint_pb2,
)
from envoy.config.listener.v3 import (  # type: ignore[import-untyped,unused-ignore]
    listener_components_pb2,
    listener_pb2,
)
from envoy.config.route.v3 import (  # type: ignore[import-untyped,unused-ignore]
    route_components_pb2,
    route_pb2,
)
from envoy.config.trace.v3 import (  # type: ignore[import-untyped,unused-ignore]
    http_tracer_pb2,
    opentelemetry_pb2,
)
from envoy.extensions.access_loggers.filters.cel.v3 import (  # type: ignore[import-untyped,unused-ignore]
    cel_pb2,
)
from envoy.extensions.filters.http.ext_proc.v3 import (  # type: ignore[import-untyped,unused-ignore]
    ext_proc_pb2,
    processing_mode_pb2,
)
from envoy.extensions.filters.http.router.v3 import (  # type: ignore[import-untyped,unused-ignore]
    router_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # type: ignore[import-untyped,unused-ignore]
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # type: ignore[import-untyped,unused-ignore]
    header_mutation_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import (  # type: ignore[import-untyped,unused-ignore]
    least_request_pb2,
)
from envoy.extensions.load_balancing_policies.override_host.v3 import (  # type: ignore[import-untyped,unused-ignore]
    override_host_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import (  # type: ignore[import-untyped,unused-ignore]
    previous_hosts_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import (  # type: ignore[import-untyped,unused-ignore]
    common_pb2,
    secret_pb2,
    tls_pb2,
)
from envoy.extensions.upstreams.http.v3 import (  # type: ignore[import-untyped,unused-ignore]
    http_protocol_options_pb2,
)
from envoy.type.matcher.v3 import (  # type: ignore[import-untyped,unused-ignore]
    regex_pb2,
    string_pb2,
)
from envoy.type.v3 import (  # type: ignore[import-untyped,unused-ignore]
    http_status_pb2,
    percent_pb2,
)
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2

from services.common import headers
from services.common.extproc import GENERATE_PATH, header_attributes
from services.common.pki import ENGINE, ROUTER, SAFETY, spiffe_id
from services.common.server import MAX_REQUEST_BODY_BYTES
from services.router.xds.snapshot import Snapshot

LISTENER_NAME = "switchyard_ingress"
ROUTE_CONFIG_NAME = "switchyard_routes"
ROUTER_CLUSTER = "switchyard_router"
SAFETY_CLUSTER = "switchyard_safety"
OTLP_CLUSTER = "switchyard_otlp"
ENVOY_SERVICE_NAME = "switchyard-envoy"
ROUTER_FILTER = "switchyard.router"
SAFETY_FILTER = "switchyard.safety"
VIRTUAL_HOST_NAME = "switchyard"
NO_POOL_ROUTE = "no_pool_selected"
CACHE_ROUTE = "response_cache"
NO_POOL_MESSAGE = "no pool selected"
NO_HTTP_ROUTE = "openai_without_safety"
# OpenAI HTTP requests: their paths, and the marker the router sets on their turns.
HTTP_PREFIX = "/v1/"
# gRPC health service an engine reports NOT_SERVING for while draining.
HEALTH_SERVICE = "switchyard.v1.Inference"
# Retried only while nothing reached the client: Envoy never retries once response headers are
# forwarded, so a turn that has streamed a token is never replayed. "unavailable" is the
# gRPC status in a trailers-only answer (an engine refusing the turn before starting it).
RETRY_ON = "connect-failure,refused-stream,reset,unavailable"
NUM_RETRIES = 2
# HTTP statuses Envoy's local replies use when an ext_proc service fails (status_on_error):
# otherwise unused, so that `_local_replies` can tell who failed and say so; clients see 503.
ROUTER_FAILED_STATUS = http_status_pb2.VariantAlsoNegotiates  # 506
SAFETY_FAILED_STATUS = http_status_pb2.InsufficientStorage  # 507
# Streams idle this long are reset (a backstop against leaks, never hit by a live turn).
STREAM_IDLE_TIMEOUT_SECONDS = 3600
CONNECT_TIMEOUT_SECONDS = 1.0

_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Endpoint:
    """One engine of a pool."""

    engine_id: str
    # IP literal (Envoy's EDS and override_host match addresses, not names).
    host: str
    port: int
    # Draining: no new turns; streams in flight continue.
    draining: bool = False
    # False while the engine is silent (stale): no new turns until it reports again.
    healthy: bool = True


@dataclass(frozen=True)
class PoolSpec:
    """A pool: its name (route and cluster `pool_<name>`) and its engines."""

    name: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class SafetySpec:
    """The safety service Envoy's second ext_proc filter calls (IP literal or DNS name)."""

    host: str
    port: int
    # The service down or failing: False fails the turn with UNAVAILABLE (never an unscrubbed
    # stream); True lets turns through unfiltered.
    fail_open: bool = False


@dataclass(frozen=True)
class TracingSpec:
    """Envoy's OpenTelemetry tracer: it starts each turn's trace and exports over OTLP/gRPC."""

    host: str  # the collector (Jaeger, an OpenTelemetry Collector, `up`'s local sink)
    port: int
    sampling_ratio: float = 1.0  # fraction of turns traced, [0, 1]


@dataclass(frozen=True)
class TlsSpec:
    """Mutual TLS from Envoy to the mesh's services: Envoy's identity and the CA come from
    file-based SDS in `sds_dir` (as Envoy sees it; `envoy_proc.write_sds` writes the files),
    and each upstream must present its role's SPIFFE ID."""

    sds_dir: str


@dataclass(frozen=True)
class MeshSpec:
    """Everything Envoy's dynamic config is built from."""

    # The gRPC ingress clients call, e.g. "127.0.0.1" and 8080.
    listener_address: str
    listener_port: int
    # The router's gRPC server, which Envoy's ext_proc filter calls (IP literal or DNS name).
    router_host: str
    router_port: int
    pools: tuple[PoolSpec, ...]
    # How long Envoy waits for each ext_proc answer before failing the turn, and the most a
    # service may extend that for one message (a long prompt to tokenize or scan).
    ext_proc_timeout_seconds: float = 2.0
    ext_proc_max_timeout_seconds: float = 30.0
    # How long an engine has to accept a turn (send response headers) before Envoy retries it
    # on the next engine.
    per_try_timeout_seconds: float = 5.0
    # Mutual TLS to the router, the safety service and the engines; None: plaintext.
    tls: TlsSpec | None = None
    # Limits on what a client may send: request headers (KiB, and how many; over these Envoy's
    # HTTP/2 codec resets the stream, so the router refuses lower ones with a message first),
    # concurrent streams on one connection (more wait for a slot, as HTTP/2 clients do).
    max_request_headers_kb: int = 64
    max_headers_count: int = 100
    max_concurrent_streams: int = 256
    # The safety filter; None runs the mesh without one (tests of routing alone).
    safety: SafetySpec | None = None
    # Tracing; None traces nothing.
    tracing: TracingSpec | None = None


def pool_cluster_name(pool: str) -> str:
    """The cluster (and its ClusterLoadAssignment) serving `pool`."""
    return f"pool_{pool}"


def build_snapshot(spec: MeshSpec) -> Snapshot:
    """The consistent snapshot for `spec`; raises ValueError naming the bad field."""
    _validate(spec)
    pools = sorted(spec.pools, key=lambda p: p.name)
    return Snapshot.of(
        clusters=[
            _service_cluster(
                ROUTER_CLUSTER, spec.router_host, spec.router_port, _upstream_tls(spec, ROUTER)
            ),
            *(
                [
                    _service_cluster(
                        SAFETY_CLUSTER,
                        spec.safety.host,
                        spec.safety.port,
                        _upstream_tls(spec, SAFETY),
                    )
                ]
                if spec.safety is not None
                else []
            ),
            *(
                [_service_cluster(OTLP_CLUSTER, spec.tracing.host, spec.tracing.port, None)]
                if spec.tracing is not None
                else []
            ),
            *(_pool_cluster(p.name, _upstream_tls(spec, ENGINE)) for p in pools),
        ],
        endpoints=[_load_assignment(p) for p in pools],
        listeners=[_listener(spec)],
        routes=[
            _route_configuration(pools, spec.per_try_timeout_seconds, http=spec.safety is not None)
        ],
    )


# -- validation -----------------------------------------------------------------------------


def _validate(spec: MeshSpec) -> None:
    _check_port("listener_port", spec.listener_port)
    _check_port("router_port", spec.router_port)
    if not _is_ip(spec.listener_address):
        raise ValueError(f"listener_address {spec.listener_address!r} must be an IP address")
    if not spec.router_host:
        raise ValueError("router_host is empty")
    if spec.safety is not None:
        if not spec.safety.host:
            raise ValueError("safety.host is empty")
        _check_port("safety.port", spec.safety.port)
    if spec.tracing is not None:
        if not spec.tracing.host:
            raise ValueError("tracing.host is empty")
        _check_port("tracing.port", spec.tracing.port)
        if not 0.0 <= spec.tracing.sampling_ratio <= 1.0:
            raise ValueError(
                f"tracing.sampling_ratio must be in [0, 1], got {spec.tracing.sampling_ratio}"
            )
    if not spec.ext_proc_timeout_seconds > 0:
        raise ValueError(
            f"ext_proc_timeout_seconds must be > 0, got {spec.ext_proc_timeout_seconds}"
        )
    if spec.ext_proc_max_timeout_seconds < spec.ext_proc_timeout_seconds:
        raise ValueError(
            f"ext_proc_max_timeout_seconds ({spec.ext_proc_max_timeout_seconds}) must be at "
            f"least ext_proc_timeout_seconds ({spec.ext_proc_timeout_seconds})"
        )
    if not spec.per_try_timeout_seconds > 0:
        raise ValueError(f"per_try_timeout_seconds must be > 0, got {spec.per_try_timeout_seconds}")
    seen: set[str] = set()
    for pool in spec.pools:
        if not _POOL_NAME.match(pool.name):
            raise ValueError(f"pools: name {pool.name!r} must match {_POOL_NAME.pattern}")
        if pool.name in seen:
            raise ValueError(f"pools: {pool.name!r} is listed twice")
        seen.add(pool.name)
        addresses: set[tuple[str, int]] = set()
        for e in pool.endpoints:
            where = f"pools[{pool.name}].endpoints[{e.engine_id}]"
            if not e.engine_id:
                raise ValueError(f"pools[{pool.name}]: an endpoint has no engine_id")
            if not _is_ip(e.host):
                raise ValueError(f"{where}.host {e.host!r} must be an IP address")
            _check_port(f"{where}.port", e.port)
            if (e.host, e.port) in addresses:
                raise ValueError(f"{where}: {e.host}:{e.port} is listed twice")
            addresses.add((e.host, e.port))


def _check_port(field: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"{field} must be in 1..65535, got {port}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- small helpers --------------------------------------------------------------------------


def _any(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def _ads() -> Any:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _socket_address(host: str, port: int) -> Any:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def _http2_only() -> dict[str, any_pb2.Any]:
    """typed_extension_protocol_options making a cluster speak HTTP/2 (gRPC) upstream."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return {_HTTP_OPTIONS_KEY: _any(options)}


def _generous_circuit_breakers() -> Any:
    # Envoy's defaults (1024 requests, 3 concurrent retries) would cap a large fleet; the
    # router's admission control and the engines' queues are the real limits.
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=_u32(100_000),
                max_pending_requests=_u32(100_000),
                max_requests=_u32(100_000),
                max_retries=_u32(1_000),
            )
        ]
    )


def _lb_policy(name: str, config: Any) -> Any:
    return cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name=name, typed_config=_any(config)
                )
            )
        ]
    )


# -- clusters -------------------------------------------------------------------------------


# Names of Envoy's identity and of the CA bundle, in the file-based SDS files.
IDENTITY_SECRET = "switchyard_identity"
CA_SECRET = "switchyard_ca"


def _sds(name: str, path: str) -> Any:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(path=path),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def _upstream_tls(spec: MeshSpec, role: str) -> Any:
    """The transport socket of a cluster whose servers must prove `role` (None: plaintext)."""
    if spec.tls is None:
        return None
    d = spec.tls.sds_dir.rstrip("/")
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds(IDENTITY_SECRET, f"{d}/identity.yaml")],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[
                        common_pb2.SubjectAltNameMatcher(
                            san_type=common_pb2.SubjectAltNameMatcher.URI,
                            matcher=string_pb2.StringMatcher(exact=spiffe_id(role)),
                        )
                    ]
                ),
                validation_context_sds_secret_config=_sds(CA_SECRET, f"{d}/ca.yaml"),
            ),
            alpn_protocols=["h2"],  # gRPC
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(context))


def _service_cluster(name: str, host: str, port: int, tls: Any) -> Any:
    """One of our gRPC services Envoy calls (ext_proc): inline endpoint, DNS when not an IP."""
    kind = cluster_pb2.Cluster.STATIC if _is_ip(host) else cluster_pb2.Cluster.STRICT_DNS
    return cluster_pb2.Cluster(
        name=name,
        type=kind,
        connect_timeout=_duration(CONNECT_TIMEOUT_SECONDS),
        transport_socket=tls,
        typed_extension_protocol_options=_http2_only(),
        circuit_breakers=_generous_circuit_breakers(),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=_socket_address(host, port)
                            )
                        )
                    ]
                )
            ],
        ),
    )


def _pool_cluster(pool: str, tls: Any) -> Any:
    name = pool_cluster_name(pool)
    override_host = override_host_pb2.OverrideHost(
        override_host_sources=[
            override_host_pb2.OverrideHost.OverrideHostSource(header=headers.ENDPOINT)
        ],
        fallback_policy=_lb_policy(
            "envoy.load_balancing_policies.least_request", least_request_pb2.LeastRequest()
        ),
    )
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=name
        ),
        # An engine the control plane removes leaves at once: by default Envoy keeps a removed
        # host while it still passes health checks, and the fallback balancer would go on
        # sending it turns. (In-flight streams on its connections finish either way.)
        ignore_health_on_host_removal=True,
        connect_timeout=_duration(CONNECT_TIMEOUT_SECONDS),
        transport_socket=tls,  # the gRPC health checks ride it too
        typed_extension_protocol_options=_http2_only(),
        load_balancing_policy=_lb_policy(
            "envoy.load_balancing_policies.override_host", override_host
        ),
        # No panic routing: with every engine unhealthy or draining, a turn fails UNAVAILABLE
        # instead of landing on an engine that is leaving.
        # update_merge_window 0: a health or drain change reaches the load balancers at
        # once instead of being merged over Envoy's default 1 s window.
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            healthy_panic_threshold=percent_pb2.Percent(value=0.0),
            update_merge_window=_duration(0),
        ),
        health_checks=[
            health_check_pb2.HealthCheck(
                timeout=_duration(2.0),
                interval=_duration(1.0),
                interval_jitter=_duration(0.1),
                no_traffic_interval=_duration(1.0),
                unhealthy_threshold=_u32(2),
                healthy_threshold=_u32(1),
                grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck(
                    service_name=HEALTH_SERVICE
                ),
            )
        ],
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=_u32(5),
            consecutive_gateway_failure=_u32(3),
            enforcing_consecutive_gateway_failure=_u32(100),
            interval=_duration(5.0),
            base_ejection_time=_duration(10.0),
            max_ejection_percent=_u32(50),
        ),
        circuit_breakers=_generous_circuit_breakers(),
    )


# -- endpoints ------------------------------------------------------------------------------


def _load_assignment(pool: PoolSpec) -> Any:
    lb_endpoints = []
    for e in sorted(pool.endpoints, key=lambda e: (e.engine_id, e.host, e.port)):
        metadata = struct_pb2.Struct()
        metadata.update({headers.METADATA_ENGINE_ID: e.engine_id})
        lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=_socket_address(e.host, e.port), hostname=e.engine_id
                ),
                health_status=(
                    health_check_pb2.DRAINING
                    if e.draining
                    else health_check_pb2.HEALTHY
                    if e.healthy
                    else health_check_pb2.UNHEALTHY
                ),
                metadata=base_pb2.Metadata(filter_metadata={headers.METADATA_NAMESPACE: metadata}),
            )
        )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=pool_cluster_name(pool.name),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )


# -- listener and routes --------------------------------------------------------------------


def _ext_proc_filter(
    name: str,
    cluster: str,
    modes: Any,
    spec: MeshSpec,
    status_on_error: int,
    *,
    fail_open: bool,
    response_attributes: Sequence[str] = (),
) -> Any:
    ext_proc = ext_proc_pb2.ExternalProcessor(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)
        ),
        failure_mode_allow=fail_open,
        processing_mode=modes,
        # Envoy's ext_proc stats per filter (`http.switchyard_ingress.ext_proc.<name>.*`:
        # message_timeouts, streams_failed…), so an operator sees which service gave up.
        stat_prefix=name.rpartition(".")[2],
        response_attributes=list(response_attributes),
        message_timeout=_duration(spec.ext_proc_timeout_seconds),
        max_message_timeout=_duration(spec.ext_proc_max_timeout_seconds),
        allow_mode_override=False,
        # The service down or late: a status of its own, which `_local_replies` turns into
        # UNAVAILABLE (503) naming the service (Envoy's default 500 would read as UNKNOWN).
        status_on_error=http_status_pb2.HttpStatus(code=status_on_error),
    )
    return hcm_pb2.HttpFilter(name=name, typed_config=_any(ext_proc))


_MODE = processing_mode_pb2.ProcessingMode


def _modes(*, request: bool, response_body: Any = _MODE.NONE, trailers: bool = False) -> Any:
    """What an ext_proc filter is sent: the request headers and buffered body, or nothing of
    the request; of the response, its headers when its body is sent (and its trailers)."""
    send, skip = _MODE.SEND, _MODE.SKIP
    responds = response_body != _MODE.NONE
    return _MODE(
        request_header_mode=send if request else skip,
        request_body_mode=_MODE.BUFFERED if request else _MODE.NONE,
        request_trailer_mode=skip,
        response_header_mode=send if responds else skip,
        response_body_mode=response_body,
        response_trailer_mode=send if trailers else skip,
    )


def _router_filter(spec: MeshSpec) -> Any:
    """The router's ext_proc: request headers and the buffered body, once per turn; it never
    sees the response."""
    modes = _modes(request=True)
    return _ext_proc_filter(
        ROUTER_FILTER, ROUTER_CLUSTER, modes, spec, ROUTER_FAILED_STATUS, fail_open=False
    )


# What the safety filter reads of a turn's request headers (all set by the router), sent with
# its first message (the response headers).
SAFETY_HEADERS = (headers.TENANT, headers.MODEL, headers.OPENAI, headers.CACHE_STORE)


def _safety_filter(spec: MeshSpec, safety: SafetySpec) -> Any:
    """The safety ext_proc, after the router's: the response headers and every chunk of the
    streamed response body; nothing of the request (the router applies the prompt policy).

    Its stream opens at the response headers, which an engine sends as it takes the turn
    (before the prefill), so opening the call is off the path to the first token; the request
    headers it reads (the tenant and model the router set…) come with them as attributes."""
    modes = _modes(request=False, response_body=_MODE.STREAMED)
    return _ext_proc_filter(
        SAFETY_FILTER,
        SAFETY_CLUSTER,
        modes,
        spec,
        SAFETY_FAILED_STATUS,
        fail_open=safety.fail_open,
        response_attributes=header_attributes(SAFETY_HEADERS),
    )


def _http_safety_modes() -> Any:
    """The safety filter on an OpenAI HTTP turn: nothing of the request, as for gRPC; the
    response headers, body and trailers full-duplex (FULL_DUPLEX_STREAMED needs the trailers
    sent), so it may hold the headers until it knows the status and write at the trailers."""
    return _modes(request=False, response_body=_MODE.FULL_DUPLEX_STREAMED, trailers=True)


def _tracing(tracing: TracingSpec) -> Any:
    """Envoy starts each turn's trace (W3C traceparent to the ext_proc calls and the engine)."""
    otel = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=OTLP_CLUSTER),
            timeout=_duration(1.0),
        ),
        service_name=ENVOY_SERVICE_NAME,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=100.0 * tracing.sampling_ratio),
        provider=http_tracer_pb2.Tracing.Http(
            name="envoy.tracers.opentelemetry", typed_config=_any(otel)
        ),
    )


def _status_is(code: int) -> Any:
    return accesslog_pb2.AccessLogFilter(
        status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(
                    default_value=code, runtime_key=f"switchyard.local_reply.{code}"
                ),
            )
        )
    )


def _matches(expression: str) -> Any:
    """A local-reply filter on a CEL expression over Envoy's request attributes."""
    return accesslog_pb2.AccessLogFilter(
        extension_filter=accesslog_pb2.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=_any(cel_pb2.ExpressionFilter(expression=expression)),
        )
    )


def _grpc_status(code: int) -> Any:
    # A gRPC local reply takes its grpc-status from this header when set, not from the HTTP
    # status (no HTTP status maps to RESOURCE_EXHAUSTED).
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="grpc-status", value=str(code)),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _text(text: str) -> Any:
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=text)
    )


def _openai_error(error_type: str) -> Any:
    """An OpenAI error object whose message is Envoy's local reply body."""
    body = struct_pb2.Struct()
    body.update(
        {
            "error": {
                "message": "%LOCAL_REPLY_BODY%",
                "type": error_type,
                "param": None,
                "code": None,
            }
        }
    )
    return substitution_format_string_pb2.SubstitutionFormatString(
        json_format=body, content_type="application/json"
    )


# A reply to an HTTP client (an OpenAI path, or a turn the router translated).
_HTTP = f"(request.path.startsWith('{HTTP_PREFIX}') || '{headers.OPENAI}' in request.headers)"
# An answer the router or the safety filter wrote (details "switchyard_…").
_OURS = "response.code_details.startsWith('switchyard_')"
# Envoy's own local replies to HTTP clients.
_HTTP_REPLY = f"{_HTTP} && !{_OURS}"


def _http_reply(
    condition: str, text: str | None, error_type: str, status: int | None = None
) -> Any:
    """A mapper making one of Envoy's local replies to an HTTP client an OpenAI error: its
    message `text` (None: Envoy's own), its status `status` (None: Envoy's)."""
    return hcm_pb2.ResponseMapper(
        filter=_matches(f"{_HTTP_REPLY} && {condition}" if condition else _HTTP_REPLY),
        status_code=_u32(status) if status is not None else None,
        body=base_pb2.DataSource(inline_string=text) if text is not None else None,
        body_format_override=_openai_error(error_type),
    )


def _http_local_replies(spec: MeshSpec) -> list[Any]:
    """The first mappers (the first match wins): HTTP answers the mesh wrote are OpenAI errors
    already and pass untouched; Envoy's own become OpenAI errors. Neither reaches the gRPC
    mappers after them."""
    return [
        hcm_pb2.ResponseMapper(filter=_matches(f"{_HTTP} && {_OURS}")),
        _http_reply(
            "response.code == 413",
            f"request body is over the mesh's limit of {MAX_REQUEST_BODY_BYTES} bytes "
            "(Envoy's request buffer)",
            "invalid_request_error",
        ),
        _http_reply(
            f"response.code == {ROUTER_FAILED_STATUS}",
            "the mesh's router failed or could not be reached, so the turn was not routed",
            "server_error",
            503,
        ),
        _http_reply(
            f"response.code == {SAFETY_FAILED_STATUS}",
            "the safety filter failed or could not be reached; the mesh fails closed",
            "server_error",
            503,
        ),
        _http_reply(
            "response.code == 504 && response.code_details.startsWith('ext_proc')",
            "the mesh's router or safety filter did not answer in time, so the turn was not served",
            "server_error",
            503,
        ),
        _http_reply(
            "response.code == 431",
            f"request headers are over the mesh's limits ({spec.max_request_headers_kb} KiB, "
            f"{spec.max_headers_count} headers)",
            "invalid_request_error",
        ),
        # Anything else Envoy answers itself (no engine could take the turn…).
        _http_reply("", None, "server_error"),
    ]


def _local_replies(spec: MeshSpec) -> Any:
    """Envoy's own answers, made to say what happened: the mesh never answers a turn with an
    empty message or a status a client would misread."""
    mapper = hcm_pb2.ResponseMapper
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            *_http_local_replies(spec),
            mapper(  # the request headers are over max_request_headers_kb or max_headers_count
                filter=_status_is(431),
                body=base_pb2.DataSource(
                    inline_string=f"request headers are over the mesh's limits "
                    f"({spec.max_request_headers_kb} KiB, {spec.max_headers_count} headers)"
                ),
                headers_to_add=[_grpc_status(8)],  # RESOURCE_EXHAUSTED
            ),
            mapper(  # the ext_proc buffer overflowed: the body is over the transport limit
                filter=_status_is(413),
                body=base_pb2.DataSource(
                    inline_string=f"request body is over the mesh's limit of "
                    f"{MAX_REQUEST_BODY_BYTES} bytes (Envoy's request buffer)"
                ),
                headers_to_add=[_grpc_status(8)],  # RESOURCE_EXHAUSTED
            ),
            mapper(
                filter=_status_is(ROUTER_FAILED_STATUS),
                status_code=_u32(503),
                headers_to_add=[_grpc_status(14)],  # UNAVAILABLE
                body_format_override=_text(
                    "the mesh's router failed or could not be reached, so the turn was not routed "
                    "(%RESPONSE_CODE_DETAILS%)"
                ),
            ),
            mapper(
                filter=_status_is(SAFETY_FAILED_STATUS),
                status_code=_u32(503),
                headers_to_add=[_grpc_status(14)],
                body_format_override=_text(
                    "the safety filter failed or could not be reached; the mesh fails closed "
                    "(%RESPONSE_CODE_DETAILS%)"
                ),
            ),
            mapper(  # a late answer is a 504 whoever was late (status_on_error is not used)
                filter=_matches(
                    "response.code == 504 && response.code_details.startsWith('ext_proc')"
                ),
                status_code=_u32(503),
                headers_to_add=[_grpc_status(14)],
                body_format_override=_text(
                    "the mesh's router or safety filter did not answer in time, so the turn "
                    "was not served (%RESPONSE_CODE_DETAILS%)"
                ),
            ),
        ]
    )


def _strip_internal_headers() -> Any:
    """Before any filter: every client copy of the mesh's own headers goes (x-switchyard-*;
    only the router sets them, from the authenticated principal), and of Envoy's control
    headers (x-envoy-*: a client must not set its own retries or timeouts)."""
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=[
            mutation_rules_pb2.HeaderMutation(
                remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                    key_matcher=string_pb2.StringMatcher(prefix=prefix)
                )
            )
            for prefix in (headers.INTERNAL_PREFIX, headers.ENVOY_PREFIX)
        ]
    )
    return extension_pb2.TypedExtensionConfig(
        name="envoy.http.early_header_mutation.header_mutation", typed_config=_any(mutation)
    )


def _listener(spec: MeshSpec) -> Any:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=ROUTE_CONFIG_NAME),
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
            max_concurrent_streams=_u32(spec.max_concurrent_streams)
        ),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            max_headers_count=_u32(spec.max_headers_count)
        ),
        max_request_headers_kb=_u32(spec.max_request_headers_kb),
        early_header_mutation_extensions=[_strip_internal_headers()],
        stream_idle_timeout=_duration(STREAM_IDLE_TIMEOUT_SECONDS),
        http_filters=[
            _router_filter(spec),
            *([_safety_filter(spec, spec.safety)] if spec.safety is not None else []),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            ),
        ],
        tracing=_tracing(spec.tracing) if spec.tracing is not None else None,
        local_reply_config=_local_replies(spec),
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=_socket_address(spec.listener_address, spec.listener_port),
        per_connection_buffer_limit_bytes=_u32(MAX_REQUEST_BODY_BYTES),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_any(hcm),
                    )
                ]
            )
        ],
    )


def _retry_policy(per_try_timeout: float) -> Any:
    return route_components_pb2.RetryPolicy(
        retry_on=RETRY_ON,
        num_retries=_u32(NUM_RETRIES),
        # Counts only until the engine's response headers (Envoy ignores it once the response
        # has started downstream): time for an engine to accept the turn, not to finish it.
        per_try_timeout=_duration(per_try_timeout),
        # A retry goes elsewhere: the next host of x-switchyard-endpoint, or the fallback
        # policy avoiding the hosts already tried.
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_any(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )


def _pool_route(pool: str, per_try_timeout: float) -> Any:
    return route_components_pb2.Route(
        name=pool_cluster_name(pool),
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[
                route_components_pb2.HeaderMatcher(
                    name=headers.POOL, string_match=string_pb2.StringMatcher(exact=pool)
                )
            ],
        ),
        route=route_components_pb2.RouteAction(
            cluster=pool_cluster_name(pool),
            timeout=_duration(0),  # no timeout: a turn streams as long as it generates
            retry_policy=_retry_policy(per_try_timeout),
        ),
    )


def _cache_route() -> Any:
    """A response-cache hit (the router set `x-switchyard-cache: hit`): to the router's replay
    of the stored answer, through the same filters (safety, tracing) as any turn."""
    return route_components_pb2.Route(
        name=CACHE_ROUTE,
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[
                route_components_pb2.HeaderMatcher(
                    name=headers.CACHE,
                    string_match=string_pb2.StringMatcher(exact=headers.CACHE_HIT),
                )
            ],
        ),
        route=route_components_pb2.RouteAction(cluster=ROUTER_CLUSTER, timeout=_duration(0)),
    )


def _openai_cache_route() -> Any:
    route = _cache_route()
    route.name = f"{CACHE_ROUTE}_openai"
    return _as_openai(route)


def _openai_pool_route(pool: str, per_try_timeout: float) -> Any:
    """The route of a pool's OpenAI HTTP turns: the gRPC route, plus gRPC's wire headers
    toward the engine and the safety filter's full-duplex response modes."""
    route = _pool_route(pool, per_try_timeout)
    route.name = f"{pool_cluster_name(pool)}_openai"
    return _as_openai(route)


def _as_openai(route: Any) -> Any:
    """`route` for OpenAI HTTP turns (see `_openai_pool_route`)."""
    route.match.headers.append(
        route_components_pb2.HeaderMatcher(name=headers.OPENAI, present_match=True)
    )
    route.route.regex_rewrite.CopyFrom(
        regex_pb2.RegexMatchAndSubstitute(
            pattern=regex_pb2.RegexMatcher(regex="^.*$"), substitution=GENERATE_PATH
        )
    )
    route.request_headers_to_add.extend(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for key, value in (("content-type", "application/grpc"), ("te", "trailers"))
    )
    per_route = ext_proc_pb2.ExtProcPerRoute(
        overrides=ext_proc_pb2.ExtProcOverrides(processing_mode=_http_safety_modes())
    )
    route.typed_per_filter_config[SAFETY_FILTER].CopyFrom(_any(per_route))
    return route


def _no_http_route() -> Any:
    """Without a safety filter nothing would turn an engine's gRPC frames into OpenAI's
    format: HTTP turns are refused."""
    return route_components_pb2.Route(
        name=NO_HTTP_ROUTE,
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[route_components_pb2.HeaderMatcher(name=headers.OPENAI, present_match=True)],
        ),
        direct_response=route_components_pb2.DirectResponseAction(
            status=501,
            body=base_pb2.DataSource(
                inline_string="the OpenAI HTTP API needs the mesh's safety filter, which writes "
                "its responses; this mesh runs without one"
            ),
        ),
    )


def _no_pool_route() -> Any:
    # A local reply to a gRPC request becomes a trailers-only gRPC answer: HTTP 503 maps to
    # grpc-status 14 (UNAVAILABLE) and the body becomes grpc-message.
    return route_components_pb2.Route(
        name=NO_POOL_ROUTE,
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=route_components_pb2.DirectResponseAction(
            status=503, body=base_pb2.DataSource(inline_string=NO_POOL_MESSAGE)
        ),
    )


def _route_configuration(pools: list[PoolSpec], per_try_timeout: float, http: bool = True) -> Any:
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        # What the caller's quotas have left, as the router wrote it at admission, goes back in
        # the response headers (omitted when empty: an unmetered turn).
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key=headers.QUOTA_REMAINING, value=f"%REQ({headers.QUOTA_REMAINING})%"
                ),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=VIRTUAL_HOST_NAME,
                domains=["*"],
                routes=[
                    _openai_cache_route() if http else _no_http_route(),
                    _cache_route(),
                    *((_openai_pool_route(p.name, per_try_timeout) for p in pools) if http else ()),
                    *(_pool_route(p.name, per_try_timeout) for p in pools),
                    _no_pool_route(),
                ],
            )
        ],
    )
