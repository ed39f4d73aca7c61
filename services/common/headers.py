"""Every request header the router, Envoy's config and the clients agree on, in one place.

Headers named `x-switchyard-*` (`INTERNAL_PREFIX`) are the mesh's own: Envoy's listener removes
every client copy of them (and of `x-envoy-*`, `ENVOY_PREFIX`, which would steer Envoy's retries
and timeouts) before any filter, and the router sets them from the authenticated principal.
Engines and the safety filter trust them for that reason.

The routing decision travels as request headers set by the router's ext_proc answer:

- `POOL` selects the route, hence the per-pool cluster (`pool_<name>`);
- `ENDPOINT` is read by the cluster's `override_host` load balancer: one `ip:port`, or several
  joined by `ENDPOINT_SEPARATOR` (the first is tried first, each retry takes the next one; when
  none is left, or none is a member of the cluster, the fallback policy `least_request` picks).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# Set by the router (ext_proc): the pool whose route and cluster serve the turn.
POOL = "x-switchyard-pool"
# Set by the router (ext_proc): the engine(s) Envoy's override_host LB pins, "ip:port[,ip:port…]".
ENDPOINT = "x-switchyard-endpoint"
# Set by the router (ext_proc): the engine id of the first pick, for logs and traces only.
ENGINE = "x-switchyard-engine"
# Set by the router once it authenticated the caller: the tenant a turn is accounted to, its
# tier, and the priority it runs at (the tier's, or lower if the client asked).
TENANT = "x-switchyard-tenant"
TIER = "x-switchyard-tier"
PRIORITY = "x-switchyard-priority"
# Set by the router at admission: the turn's quota reservation, which the engine serving it
# reports its usage against; and the prefix-cache salt of the tenant (or its cache group), so
# no tenant shares KV blocks with another.
RESERVATION = "x-switchyard-reservation"
CACHE_SALT = "x-switchyard-cache-salt"
# Set by the router when a tiered name ("auto") chose the turn's model: the name asked for, and
# how the tier chose (the engine names both in the Final's served_by).
ROUTED_AS = "x-switchyard-routed-as"
ROUTE_REASON = "x-switchyard-route-reason"
# Set by the router as it sends a turn on (to an engine, or to the cache replay): the served
# model. The safety filter scrubs the response with the tenant's and this model's policy; a
# response without it is a reply the router wrote itself.
MODEL = "x-switchyard-model"
# Set by the router when a fallback model serves the turn (graceful degradation): why.
DEGRADED = "x-switchyard-degraded"
# The response cache (services/router/response_cache.py). A hit: `CACHE` is "hit" (Envoy routes
# the turn to the router's cache replay) and `CACHE_KEY` names the answer. A cacheable miss:
# `CACHE_STORE` ("key;ttl") tells the safety filter to store the turn once it has ended.
CACHE = "x-switchyard-cache"
CACHE_HIT = "hit"
CACHE_KEY = "x-switchyard-cache-key"
CACHE_STORE = "x-switchyard-cache-store"
# Set by the router at admission, and copied by Envoy into the response headers: what the
# caller's quotas have left after this turn's reservation ("tokens_per_minute=9100, …").
QUOTA_REMAINING = "x-switchyard-quota-remaining"
# Set by the router on an OpenAI HTTP turn (`services/openai`): how to answer it (chat or
# completions, streamed or not, usage, id, model), urlencoded. It selects the pool's HTTP route
# (gRPC's wire headers toward the engine) and tells the safety filter to answer in OpenAI's
# format; Envoy strips any client copy like every x-switchyard-* header.
OPENAI = "x-switchyard-openai"
# Client metadata naming a conversation, so its turns stay on the engine holding its cache.
SESSION_ID = "x-session-id"
# Client metadata carrying the API key: "Bearer <key>".
AUTHORIZATION = "authorization"
# Trailing metadata (set by the engine) carrying the turn's trace id, for `switchyard trace`.
TRACE_ID = "x-switchyard-trace-id"
# Response headers (set by the engine as it accepts a turn, before its first token): the
# serialized `switchyard.v1.ServedBy` of the engine. Their arrival tells a client (and Envoy's
# per-try timeout) that an engine took the turn; a stream that breaks after it can be resumed.
SERVED_BY = "x-switchyard-served-by-bin"

# The mesh's own request headers: no client may set them.
INTERNAL_PREFIX = "x-switchyard-"
# Headers that steer Envoy itself (retries, timeouts, tracing): no client may set them either.
ENVOY_PREFIX = "x-envoy-"

# Separator of the fallback list in `ENDPOINT` (Envoy splits on it and trims whitespace).
ENDPOINT_SEPARATOR = ","

# Endpoint metadata namespace in the ClusterLoadAssignment, and the key holding the engine id.
METADATA_NAMESPACE = "switchyard"
METADATA_ENGINE_ID = "engine_id"


def endpoint_address(host: str, port: int) -> str:
    """The form Envoy's override_host matches: "10.0.0.5:8000" or "[fd00::5]:8000".

    `host` must be an IP literal, as in the ClusterLoadAssignment (Envoy compares addresses,
    not names)."""
    ip = ipaddress.ip_address(host)
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def endpoint_list(addresses: Iterable[str]) -> str:
    """The `ENDPOINT` header value for a first pick followed by its fallbacks."""
    return ENDPOINT_SEPARATOR.join(addresses)
