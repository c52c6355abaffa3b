"""Key material for a federation: a private CA, the aggregator's TLS certificate and one
authentication key pair per site.

Layout written by :func:`make_certs` (``pathfl fl certs``)::

    DIR/ca.crt  ca.key                      # CA (keep ca.key offline; only ca.crt is shared)
    DIR/server.crt  server.key              # SuperLink TLS certificate, SANs = --hosts
    DIR/sites/<site>.key  <site>.pub        # SuperNode auth keys (OpenSSH, EC P-384)

The site keys are what Flower's SuperNode authentication uses: the coordinator registers each
``<site>.pub`` (``pathfl fl server --certs DIR`` registers DIR/sites/*.pub), the site keeps
``<site>.key``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathfl.io import atomic_path

logger = logging.getLogger(__name__)

SITE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CertPaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def site_key(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.key"

    def site_pub(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.pub"


def validate_site_name(site: str) -> str:
    if not SITE_NAME_RE.match(site):
        raise ValueError(
            f"invalid site name {site!r}: use letters, digits, '_', '-', '.' (max 64 chars)"
        )
    return site


def _write_private(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _san_entries(hosts: list[str]) -> list:
    from cryptography import x509

    entries: list = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def make_site_keys(root: Path, site: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write one EC P-384 key pair for ``site`` in OpenSSH format (Flower's node-auth format)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = CertPaths(root)
    validate_site_name(site)
    key_path, pub_path = paths.site_key(site), paths.site_pub(site)
    if key_path.exists() and not overwrite:
        logger.info("site key for %s exists, kept: %s", site, key_path)
        return key_path, pub_path
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    _write_public(
        pub_path,
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" pathfl-site-{site}\n".encode(),
    )
    return key_path, pub_path


def make_certs(
    out_dir: str | os.PathLike[str],
    *,
    sites: list[str],
    hosts: list[str],
    days: int = 365,
    overwrite: bool = False,
) -> CertPaths:
    """Create (or complete) the CA, the server certificate for ``hosts`` and site key pairs.

    An existing CA is reused unless ``overwrite`` (so adding a site later keeps the others
    valid); the server certificate is rewritten when ``overwrite`` or missing."""
    if not hosts:
        raise ValueError("at least one host name or IP for the server certificate is needed")
    paths = CertPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _load_or_make_ca(paths, days=days, overwrite=overwrite)
    if overwrite or not (paths.server_cert.exists() and paths.server_key.exists()):
        _make_server_cert(paths, ca_key, ca_cert, hosts=hosts, days=days)
    for site in sites:
        make_site_keys(paths.root, site, overwrite=overwrite)
    logger.info("certificates in %s (server SANs: %s; sites: %s)", paths.root, hosts, sites)
    return paths


def _builder(subject: Any, issuer: Any, public_key: Any, *, days: int) -> Any:
    """An X.509 certificate builder valid from 5 minutes ago for ``days`` days."""
    from cryptography import x509

    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _write_key_and_cert(key_path: Path, cert_path: Path, key: Any, cert: Any) -> None:
    """The private key (PKCS8 PEM, mode 600) and its certificate (PEM)."""
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    _write_private(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_public(cert_path, cert.public_bytes(pem))


def _load_or_make_ca(paths: CertPaths, *, days: int, overwrite: bool) -> tuple[Any, Any]:
    """The federation CA's key and certificate: the existing ones unless ``overwrite``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if paths.ca_key.exists() and paths.ca_cert.exists() and not overwrite:
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        return ca_key, x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pathfl federation CA")])
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), days=days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key_and_cert(paths.ca_key, paths.ca_cert, ca_key, ca_cert)
    return ca_key, ca_cert


def _make_server_cert(
    paths: CertPaths, ca_key: Any, ca_cert: Any, *, hosts: list[str], days: int
) -> None:
    """The SuperLink's TLS key and certificate (CN = first host, SANs = all ``hosts``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    server_key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server_cert = (
        _builder(subject, ca_cert.subject, server_key.public_key(), days=days)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key_and_cert(paths.server_key, paths.server_cert, server_key, server_cert)
