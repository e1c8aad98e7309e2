"""A private CA and the certificates it signs, as PEM bytes: what ``pscluster certs`` writes.

Imported only when certificates are made (:func:`pscluster.client.cli_certs.write_certs`), so
that `pscluster --help` does not load cryptography. Keys are ECDSA P-256 and every certificate
is valid from five minutes ago, so a host whose clock runs a little behind accepts it at once.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class IssuedPEMs:
    """The CA, a server and a client certificate with their keys, PEM-encoded."""

    ca: bytes
    ca_key: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


@dataclass(frozen=True)
class _Authority:
    """The CA that signs the leaves, and the validity window every certificate shares."""

    key: ec.EllipticCurvePrivateKey
    name: x509.Name
    start: datetime.datetime
    end: datetime.datetime

    def leaf(
        self, common: str, usages: list[x509.ObjectIdentifier], sans: Sequence[str]
    ) -> tuple[bytes, bytes]:
        """A certificate for ``common`` signed by this CA, and its key, as PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.start)
            .not_valid_after(self.end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in sans]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(PEM), _pem_key(key)


def issue(hosts: Sequence[str], days: int) -> IssuedPEMs:
    """A new CA, a server certificate for ``hosts`` (subject alternative names; the first is
    its common name) usable for server and client authentication, and a client certificate,
    all valid for ``days``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    authority = _Authority(ca_key, _name("pscluster CA"), start, end)
    ca = _ca_certificate(authority)
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server_pem, server_key = authority.leaf(hosts[0], both, hosts)
    client_pem, client_key = authority.leaf(
        "pscluster client", [ExtendedKeyUsageOID.CLIENT_AUTH], []
    )
    return IssuedPEMs(
        ca=ca.public_bytes(PEM),
        ca_key=_pem_key(ca_key),
        server_cert=server_pem,
        server_key=server_key,
        client_cert=client_pem,
        client_key=client_key,
    )


def _ca_certificate(authority: _Authority) -> x509.Certificate:
    """The self-signed CA: it may sign certificates (and CRLs) but no intermediate CAs."""
    public = authority.key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(authority.name)
        .issuer_name(authority.name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(authority.start)
        .not_valid_after(authority.end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .sign(authority.key, hashes.SHA256())
    )


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pscluster"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip()))
    except ValueError:
        return x509.DNSName(host.strip())
