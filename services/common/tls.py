"""Mutual TLS between the mesh's services, and who may call what.

Every gRPC server of the mesh requires a client certificate from the mesh's CA, and every
method is open to a fixed set of roles (`AccessPolicy`): engines take `Generate` only from Envoy
and operators, the registry only engines, the admin API only operators... The caller's role is
the SPIFFE ID (or common name) of its certificate (`services/common/pki.py`). A refused call is
PERMISSION_DENIED naming the method and the role; a caller without a certificate from the CA
does not get past the TLS handshake.

A service's files come from its config's `tls:` section (paths, e.g. from cert-manager) or, by
default, from the local PKI, created on first use. Servers re-read their certificate when the
files change (checked at each new connection), so certificates rotate without a restart;
clients read theirs for each new channel. `plaintext: true` turns all of it off — no identities,
every caller trusted — and is logged as a warning at every start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pydantic

from services.common.config import StrictModel
from services.common.errors import PermissionDenied
from services.common.pki import TRUST_DOMAIN, default_pki_dir, ensure_pki, role_host

log = logging.getLogger(__name__)

ANY = "*"  # in a policy: every authenticated role


class TlsConfig(StrictModel):
    """A service's side of mutual TLS. Unset paths come from the local PKI."""

    # No TLS at all: no identities, every caller trusted. For debugging only; logged loudly.
    plaintext: bool = False
    ca: Path | None = None  # the CA bundle peers' certificates must chain to
    cert: Path | None = None  # this service's certificate (chain), PEM
    key: Path | None = None  # its private key, PEM
    pki_dir: Path | None = None  # the local PKI (default $SWITCHYARD_PKI, ~/.cache/switchyard/pki)

    @pydantic.model_validator(mode="after")
    def _paired(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: set both or neither")
        return self

    def files(self, role: str) -> TlsFiles | None:
        """The files this service presents as `role`; None when plaintext."""
        if self.plaintext:
            return None
        pki = None
        if self.ca is None or self.cert is None:
            pki = ensure_pki(self.pki_dir or default_pki_dir())
        ca = self.ca or (pki.ca if pki else None)
        cert = self.cert or (pki.cert(role) if pki else None)
        key = self.key or (pki.key(role) if pki else None)
        assert ca is not None and cert is not None and key is not None
        return TlsFiles(ca, cert, key)


@dataclass(frozen=True)
class TlsFiles:
    """One identity's certificate and key, and the CA it trusts."""

    ca: Path
    cert: Path
    key: Path

    def _config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
        )

    def _stamp(self) -> tuple[float, ...]:
        return tuple(p.stat().st_mtime for p in (self.ca, self.cert, self.key))

    def server_credentials(self) -> grpc.ServerCredentials:
        """Requires a client certificate from the CA; re-reads the files when they change."""
        seen = [self._stamp()]

        def fetch() -> Any:
            try:
                stamp = self._stamp()
                if stamp == seen[0]:
                    return None  # unchanged: keep the current configuration
                config = self._config()
            except OSError as e:  # mid-rotation: keep serving with what we have
                log.warning("TLS files not readable (%s); keeping the current certificate", e)
                return None
            seen[0] = stamp
            log.info("TLS certificate %s reloaded", self.cert)
            return config

        return grpc.dynamic_ssl_server_credentials(
            self._config(), fetch, require_client_authentication=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def channel(
    target: str, tls: TlsFiles | None, options: Any = None, *, peer: str = ""
) -> grpc.aio.Channel:
    """A channel to one of the mesh's services: mutual TLS with `tls`, plaintext when None.

    With `peer` (a role), the server's certificate must name that role's host
    (`pki.role_host`) instead of the address dialled: for targets no certificate can name,
    such as a pod's IP on Kubernetes or each replica of a Service."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if peer:
        options = [*(options or ()), ("grpc.ssl_target_name_override", role_host(peer))]
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)


def peer_role(context: grpc.aio.ServicerContext) -> str:
    """The caller's role from its certificate ("" without one)."""
    auth = context.auth_context() or {}
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    for spiffe in auth.get("peer_spiffe_id", ()):
        text = bytes(spiffe).decode(errors="replace")
        if text.startswith(prefix):
            return text[len(prefix) :]
    for cn in auth.get("x509_common_name", ()):
        return bytes(cn).decode(errors="replace")
    return ""


class AccessPolicy:
    """Which roles may call which methods: the longest matching prefix of the method path
    ("/switchyard.v1.Registry/", "/switchyard.v1.Admin/Drain") decides; no match refuses.
    Health checks are open to every authenticated caller unless listed."""

    def __init__(self, rules: dict[str, frozenset[str] | set[str]]) -> None:
        rules = {"/grpc.health.v1.Health/": frozenset({ANY}), **rules}
        self._rules = {prefix: frozenset(roles) for prefix, roles in rules.items()}
        self._prefixes = sorted(self._rules, key=len, reverse=True)
        self._by_method: dict[str, frozenset[str]] = {}  # every call checks: looked up once

    def roles_for(self, method: str) -> frozenset[str]:
        roles = self._by_method.get(method)
        if roles is None:
            prefix = next((p for p in self._prefixes if method.startswith(p)), None)
            roles = self._rules[prefix] if prefix is not None else frozenset()
            if len(self._by_method) < 1024:  # method names are a server's few, bound anyway
                self._by_method[method] = roles
        return roles

    def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Raise PermissionDenied unless the caller's role may call `method`."""
        role = peer_role(context)
        allowed = self.roles_for(method)
        if role and (ANY in allowed or role in allowed):
            return
        who = f"role {role!r}" if role else "a caller without a mesh certificate"
        names = ", ".join(sorted(allowed)) or "nobody"
        raise PermissionDenied(f"{method} is not open to {who} (it is open to: {names})")
