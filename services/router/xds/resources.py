"""xDS resource type URLs, the order ADS pushes them in, and how each resource is named.

Like go-control-plane's `pkg/resource/v3`: constants only, no behaviour beyond naming.
"""

from __future__ import annotations

from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

# ADS answers in this order so that nothing Envoy receives refers to what it has not got yet:
# a cluster before its endpoints, clusters before the listeners whose routes use them.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# Types whose empty `resource_names` means "everything" (the others subscribe by name).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

# Short names for metric labels and logs.
SHORT_NAMES: dict[str, str] = {
    CLUSTER: "cluster",
    ENDPOINT: "endpoint",
    LISTENER: "listener",
    ROUTE: "route",
}


def type_url_of(resource: Message) -> str:
    """The type URL of a resource message (raises KeyError for a type xDS here does not serve)."""
    url = _PREFIX + resource.DESCRIPTOR.full_name
    if url not in SHORT_NAMES:
        raise KeyError(f"{resource.DESCRIPTOR.full_name} is not an xDS resource type served here")
    return url


def resource_name(resource: Message) -> str:
    """The name Envoy subscribes by: `cluster_name` for a ClusterLoadAssignment, else `name`."""
    field = "cluster_name" if type_url_of(resource) == ENDPOINT else "name"
    value = getattr(resource, field)
    assert isinstance(value, str)
    return value


def short_name(type_url: str) -> str:
    """ "cluster", "endpoint", "listener" or "route"; the URL itself for anything else."""
    return SHORT_NAMES.get(type_url, type_url)
