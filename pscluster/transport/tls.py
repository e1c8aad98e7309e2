"""TLS credentials for every server and channel, built in one place from Settings.

Servers serve TLS when ``tls_cert`` and ``tls_key`` are set, and ask for a client certificate
signed by ``tls_ca`` when ``tls_client_auth`` is on (mutual TLS). Callers dial TLS when
``tls_ca`` or ``tls_cert`` is set: ``tls_ca`` verifies the server (unset: the system's
roots), ``tls_cert`` + ``tls_key`` are presented as the client certificate.

In a cluster every process gets the same ``PSC_TLS_*`` variables, so the coordinator (a
server, and a client of the shards) presents its server certificate as its client certificate:
``pscluster certs`` issues server certificates valid for both uses.

Every file is read here, at start, so that a missing or unreadable file is one clear error
naming the variable instead of a connection that silently never comes up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from pscluster.config import Settings


class TLSConfigError(ValueError):
    """The TLS settings are incomplete or name a file that cannot be used."""


def _read_pem(path: Path, variable: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(
            f"{variable}={path}: cannot read it ({e.strerror or e}); expected a PEM {what}"
        ) from e
    if b"-----BEGIN" not in data:
        raise TLSConfigError(
            f"{variable}={path} is not PEM (no '-----BEGIN' line); expected a PEM {what}, "
            "e.g. one written by `pscluster certs`"
        )
    return data


def server_enabled(settings: Settings) -> bool:
    return settings.tls_cert is not None or settings.tls_key is not None


def client_enabled(settings: Settings) -> bool:
    return settings.tls_ca is not None or settings.tls_cert is not None


def _key_pair(settings: Settings) -> tuple[bytes, bytes] | None:
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        missing = "PSC_TLS_KEY" if settings.tls_key is None else "PSC_TLS_CERT"
        raise TLSConfigError(
            f"{missing} is not set; a TLS certificate needs both PSC_TLS_CERT and PSC_TLS_KEY"
        )
    key = _read_pem(settings.tls_key, "PSC_TLS_KEY", "private key")
    cert = _read_pem(settings.tls_cert, "PSC_TLS_CERT", "certificate")
    return key, cert


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials; None when TLS is off (no certificate configured)."""
    pair = _key_pair(settings)
    if pair is None:
        if settings.tls_client_auth:
            raise TLSConfigError(
                "PSC_TLS_CLIENT_AUTH is on but PSC_TLS_CERT and PSC_TLS_KEY are not set; "
                "mutual TLS needs the server's own certificate too"
            )
        return None
    ca: bytes | None = None
    if settings.tls_client_auth:
        if settings.tls_ca is None:
            raise TLSConfigError(
                "PSC_TLS_CLIENT_AUTH is on but PSC_TLS_CA is not set; the server needs the CA "
                "that signs client certificates"
            )
        ca = _read_pem(settings.tls_ca, "PSC_TLS_CA", "CA certificate")
    return grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=settings.tls_client_auth
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """The caller's TLS credentials; None when the caller dials in plain text."""
    if not client_enabled(settings):
        return None
    ca = _read_pem(settings.tls_ca, "PSC_TLS_CA", "CA certificate") if settings.tls_ca else None
    pair = _key_pair(settings)
    key, cert = pair if pair is not None else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def dial(address: str, settings: Settings, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A plain-text or TLS channel to ``address``, as the settings say."""
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    extra: list[tuple[str, Any]] = []
    if settings.tls_server_name:
        # The certificate names a host other than the one dialled (e.g. "pscluster" at
        # 127.0.0.1); verification still happens, against this name.
        extra.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return grpc.secure_channel(address, credentials, options=[*options, *extra])
