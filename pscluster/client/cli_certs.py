"""``pscluster certs DIR``: a private CA, a server certificate and a client certificate.

Enough for TLS and mutual TLS between the processes of one cluster without an outside PKI::

    pscluster certs ./certs --host pscluster --host 10.0.0.5
    PSC_TLS_CERT=certs/server.pem PSC_TLS_KEY=certs/server-key.pem PSC_TLS_CA=certs/ca.pem ...

The server certificate is valid for server and client authentication: every cluster process
gets the same ``PSC_TLS_*`` variables, and the coordinator presents it when it calls the
shards under mutual TLS. Keys are written 0600; the CA key stays in DIR for issuing more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from pscluster.client.cli_common import fail, out

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
VALID_DAYS = 825  # the longest lifetime common clients accept for a server certificate


@dataclass(frozen=True)
class CertPaths:
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write(path: Path, data: bytes, private: bool) -> None:
    # Created with the final mode, so a key is never readable by others, even for a moment.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def write_certs(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = VALID_DAYS
) -> CertPaths:
    """Write ca.pem, ca-key.pem, server.pem, server-key.pem, client.pem, client-key.pem.

    ``hosts`` become the server certificate's subject alternative names (IP addresses as IP
    entries, anything else as DNS names). Raises ValueError for an empty host or days < 1.
    The certificates come from :mod:`pscluster.client.certificates`, imported here on use:
    `pscluster --help` should not load cryptography.
    """
    from pscluster.client.certificates import issue

    if not hosts or any(not h.strip() for h in hosts):
        raise ValueError("every --host must be a non-empty DNS name or IP address")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    directory.mkdir(parents=True, exist_ok=True)
    pems = issue(hosts, days)
    paths = CertPaths(
        ca=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    _write(paths.ca, pems.ca, private=False)
    _write(paths.ca_key, pems.ca_key, private=True)
    _write(paths.server_cert, pems.server_cert, private=False)
    _write(paths.server_key, pems.server_key, private=True)
    _write(paths.client_cert, pems.client_cert, private=False)
    _write(paths.client_key, pems.client_key, private=True)
    return paths


def certs(
    directory: Annotated[Path, typer.Argument(help="folder to write the PEM files to")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="name or IP the servers are reached at (repeat; default localhost, 127.0.0.1)",
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="validity in days")] = VALID_DAYS,
) -> None:
    """Write a CA, a server certificate (for the given hosts) and a client certificate."""
    try:
        paths = write_certs(directory, host or list(DEFAULT_HOSTS), days)
    except (ValueError, OSError) as e:
        raise fail(str(e)) from None
    console = out()
    console.print(
        f"wrote a CA, a server and a client certificate to {directory}",
        markup=False,
        soft_wrap=True,
    )
    console.print("servers (coordinator, shards) and workers:", markup=False, soft_wrap=True)
    console.print(
        f"  PSC_TLS_CERT={paths.server_cert} PSC_TLS_KEY={paths.server_key} "
        f"PSC_TLS_CA={paths.ca}  (mutual TLS: also PSC_TLS_CLIENT_AUTH=true)",
        markup=False,
        soft_wrap=True,
    )
    console.print("clients (SDK, CLI):", markup=False, soft_wrap=True)
    console.print(
        f"  PSC_TLS_CA={paths.ca}  (mutual TLS: also PSC_TLS_CERT={paths.client_cert} "
        f"PSC_TLS_KEY={paths.client_key})",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"keep {paths.ca_key} safe: it can issue certificates this cluster trusts", markup=False
    )
