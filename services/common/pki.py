"""The mesh's local certificate authority: one CA, one certificate per service identity.

The embedded default is secure with no setup: the first process that needs a certificate
(`switchyard up`, a standalone `switchyard engine`, the CLI) creates the CA and every identity's
certificate under `$SWITCHYARD_PKI` (default `~/.cache/switchyard/pki`), keys readable by the
owner only. Certificates are renewed when less than a week is left; services pick renewed files
up without a restart (`services/common/tls.py`). Real deployments point each service's `tls:`
section at their own files (cert-manager, SPIFFE) instead.

Identities are roles, named in the certificate's common name and as a SPIFFE URI SAN
(`spiffe://switchyard.local/<role>`): `envoy` (the data plane, calling ext_proc services and
engines), `router`, `safety`, `engine` (every engine), `operator` (the CLI, benchmarks and
tests: admin, and direct calls to engines). Every certificate also names localhost, 127.0.0.1
and ::1, so the same files serve loopback servers and their clients.

    pki = ensure_pki()               # creates or renews what is missing
    pki.cert(ENGINE), pki.key(ENGINE), pki.ca
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.files import atomic_write, file_lock, home_path

ENVOY = "envoy"
ROUTER = "router"
SAFETY = "safety"
ENGINE = "engine"
OPERATOR = "operator"
AUTOSCALER = "autoscaler"  # KEDA (or another autoscaler) reading the router's scaling signal
ROLES = (ENVOY, ROUTER, SAFETY, ENGINE, OPERATOR, AUTOSCALER)

TRUST_DOMAIN = "switchyard.local"
CA_DAYS = 3650
LEAF_DAYS = 30
RENEW_DAYS = 7  # a certificate with less left is issued again


def spiffe_id(role: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{role}"


def role_host(role: str) -> str:
    """The DNS name every certificate of `role` carries (`router.switchyard.local`): a client
    that dials a service by an address no certificate can name (a pod's IP, one replica of
    several) checks the server's role by it (services/common/tls.py `channel(peer=...)`)."""
    return f"{role}.{TRUST_DOMAIN}"


def default_pki_dir() -> Path:
    """$SWITCHYARD_PKI, else $SWITCHYARD_HOME/pki (~/.cache/switchyard/pki)."""
    return home_path("pki", "SWITCHYARD_PKI")


@dataclass(frozen=True)
class Pki:
    """Where the CA and each role's certificate and key are."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    def cert(self, role: str) -> Path:
        return self.directory / f"{role}.pem"

    def key(self, role: str) -> Path:
        return self.directory / f"{role}.key"


def ensure_pki(directory: Path | None = None, roles: tuple[str, ...] = ROLES) -> Pki:
    """The local PKI at `directory`, creating the CA and any missing or expiring certificate.
    Safe to call from several processes at once (a lock file serializes them)."""
    pki = Pki((directory or default_pki_dir()).expanduser())
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(pki.directory / ".lock"):
        if not (pki.ca.exists() and pki.ca_key.exists()) or _expiring(pki.ca):
            _new_ca(pki)
            for role in roles:  # a new CA: every certificate again
                pki.cert(role).unlink(missing_ok=True)
        for role in roles:
            if not (pki.cert(role).exists() and pki.key(role).exists()) or _stale(
                pki.cert(role), role
            ):
                issue(pki, role)
    return pki


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _expiring(cert_path: Path) -> bool:
    cert = _load(cert_path)
    return cert is None or _expires_soon(cert)


def _stale(cert_path: Path, role: str) -> bool:
    """Expiring, or issued before certificates named their role's host (role_host)."""
    from cryptography import x509

    cert = _load(cert_path)
    if cert is None or _expires_soon(cert):
        return True
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    return role_host(role) not in names.get_values_for_type(x509.DNSName)


def _load(cert_path: Path) -> Any:
    """The certificate at `cert_path`, or None when it cannot be read."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None


def _expires_soon(cert: Any) -> bool:
    return bool(cert.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_DAYS))


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


def _new_ca(pki: Pki) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Switchyard local mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Switchyard local CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    atomic_write(pki.ca_key, _key_pem(key), 0o600)
    atomic_write(pki.ca, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def issue(pki: Pki, role: str, days: int = LEAF_DAYS) -> None:
    """A new key and certificate for `role`, signed by the CA (replacing any earlier)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Switchyard local mesh"),
                    x509.NameAttribute(NameOID.COMMON_NAME, role),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(spiffe_id(role)),
                    x509.DNSName(role_host(role)),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    # The key first: a reader that sees the new certificate must find its key.
    atomic_write(pki.key(role), _key_pem(key), 0o600)
    atomic_write(pki.cert(role), cert.public_bytes(serialization.Encoding.PEM), 0o644)
