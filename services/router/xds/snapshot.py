"""An immutable set of xDS resources with one version per type, checked for consistency.

Like go-control-plane's `pkg/cache/v3/snapshot.go`: the version of a type is a content hash of
its resources (deterministic serialization), so a snapshot rebuilt from the same description
keeps the versions of the types that did not change and ADS pushes only what did.

    snap = Snapshot.of(clusters=[...], endpoints=[...], listeners=[...], routes=[...])
    snap.check_consistent()              # raises InconsistentSnapshotError
    snap.version(resources.CLUSTER)      # "3f2a…"
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

# xds-protos ships no type stubs: its modules are untyped (Any) to mypy.
from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped,unused-ignore]
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # type: ignore[import-untyped,unused-ignore]
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from services.router.xds import resources

_HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


class InconsistentSnapshotError(ValueError):
    """A snapshot refers to an EDS or RDS resource it does not contain."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("inconsistent xDS snapshot: " + "; ".join(errors))
        self.errors = errors


def content_version(named: Mapping[str, Message]) -> str:
    """A short hash of the resources' names and deterministic serializations."""
    digest = hashlib.sha256()
    for name in sorted(named):
        data = named[name].SerializeToString(deterministic=True)
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


class Snapshot:
    """Resources by type URL and name, with a content version per type. Treat as immutable."""

    def __init__(self, by_type: Mapping[str, Iterable[Message]]) -> None:
        named: dict[str, dict[str, Message]] = {url: {} for url in resources.PUSH_ORDER}
        for url, items in by_type.items():
            if url not in named:
                raise ValueError(f"unknown xDS type URL {url!r}")
            for item in items:
                if resources.type_url_of(item) != url:
                    raise ValueError(f"{item.DESCRIPTOR.full_name} listed under {url}")
                name = resources.resource_name(item)
                if not name:
                    raise ValueError(f"a {resources.short_name(url)} resource has no name")
                if name in named[url]:
                    raise ValueError(f"duplicate {resources.short_name(url)} {name!r}")
                named[url][name] = item
        self._resources = {url: MappingProxyType(items) for url, items in named.items()}
        self._versions = {url: content_version(items) for url, items in named.items()}

    @classmethod
    def of(
        cls,
        *,
        clusters: Iterable[Message] = (),
        endpoints: Iterable[Message] = (),
        listeners: Iterable[Message] = (),
        routes: Iterable[Message] = (),
    ) -> Snapshot:
        """A snapshot from resource lists, one keyword per type."""
        return cls(
            {
                resources.CLUSTER: clusters,
                resources.ENDPOINT: endpoints,
                resources.LISTENER: listeners,
                resources.ROUTE: routes,
            }
        )

    def version(self, type_url: str) -> str:
        """The content version of one type (stable while its resources are unchanged)."""
        return self._versions[type_url]

    def resources(self, type_url: str) -> Mapping[str, Message]:
        """The resources of one type by name (read-only)."""
        return self._resources[type_url]

    def consistency_errors(self) -> list[str]:
        """What the snapshot refers to but lacks: the ClusterLoadAssignment of each EDS cluster
        and the RouteConfiguration of each listener's RDS. Extra (dangling) ones are fine."""
        errors: list[str] = []
        endpoints = self._resources[resources.ENDPOINT]
        cluster: Any
        for name, cluster in self._resources[resources.CLUSTER].items():
            if cluster.type == cluster_pb2.Cluster.EDS:
                service = cluster.eds_cluster_config.service_name or name
                if service not in endpoints:
                    errors.append(f"cluster {name!r} uses EDS {service!r}, which is missing")
        routes = self._resources[resources.ROUTE]
        for name, listener in self._resources[resources.LISTENER].items():
            for route_name in _rds_names(listener):
                if route_name not in routes:
                    errors.append(
                        f"listener {name!r} uses route configuration {route_name!r}, "
                        "which is missing"
                    )
        return errors

    def check_consistent(self) -> None:
        """Raise InconsistentSnapshotError listing every missing reference."""
        errors = self.consistency_errors()
        if errors:
            raise InconsistentSnapshotError(errors)


def _rds_names(listener: Any) -> list[str]:
    """Route configuration names a listener's HTTP connection managers fetch over RDS."""
    names: list[str] = []
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            typed = network_filter.typed_config
            if typed.TypeName() != _HCM_TYPE:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            typed.Unpack(hcm)
            if hcm.HasField("rds"):
                names.append(hcm.rds.route_config_name)
    return names
