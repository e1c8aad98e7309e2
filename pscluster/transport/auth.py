"""Bearer tokens on every RPC: the cluster's admin token and per-job tokens.

Servers (coordinator and shards) hold the admin token (``PSC_ADMIN_TOKEN`` or
``PSC_ADMIN_TOKEN_FILE``); with none, they accept every call, as before, and say so at start.
Callers send ``authorization: Bearer <token>``: ``PSC_TOKEN`` / ``PSC_TOKEN_FILE``, else the
admin token when the caller is a cluster process that has one.

A job token is ``pscj.<job_id>.<mac>`` where mac = HMAC-SHA256(job key, job_id) and the job
key is itself HMAC-SHA256(admin token, a fixed label). Deriving instead of storing means:
every process that holds the admin token (a restarted coordinator, a shard) can check a job
token without a database of secrets; nothing secret is written to disk; the admin token cannot
be recovered from a job token; and rotating the admin token revokes every job token at once.
The price: one job token cannot be revoked alone (it only ever reaches its own job).

Which methods a token reaches, and the server interceptor that checks it, are in
:mod:`pscluster.transport.access_control`; see docs/reliability.md, "Security model".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from pscluster.config import Settings

JOB_TOKEN_PREFIX = "pscj."
MIN_ADMIN_TOKEN_CHARS = 16
_JOB_KEY_LABEL = b"pscluster/v1 job-token key"
METADATA_KEY = "authorization"


class TokenConfigError(ValueError):
    """A token setting is contradictory or names a file that cannot be used."""


def _read_secret(value: SecretStr | None, file: Path | None, variable: str) -> str | None:
    if value is not None and file is not None:
        raise TokenConfigError(f"both {variable} and {variable}_FILE are set; set one of them")
    if file is not None:
        try:
            text = Path(file).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenConfigError(
                f"{variable}_FILE={file}: cannot read it ({e}); expected a file holding the token"
            ) from e
        if not text:
            raise TokenConfigError(f"{variable}_FILE={file} is empty; expected the token in it")
    elif value is not None:
        text = value.get_secret_value().strip()
        if not text:
            raise TokenConfigError(f"{variable} is set but empty; unset it or give the token")
    else:
        return None
    # It travels as an HTTP/2 header value: printable ASCII without spaces.
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise TokenConfigError(
            f"{variable}: a token must be printable ASCII without spaces, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return text


def admin_token(settings: Settings) -> str | None:
    """The cluster's admin token, or None when the cluster runs without authentication."""
    token = _read_secret(settings.admin_token, settings.admin_token_file, "PSC_ADMIN_TOKEN")
    if token is not None and len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise TokenConfigError(
            f"PSC_ADMIN_TOKEN has {len(token)} characters; use at least {MIN_ADMIN_TOKEN_CHARS} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def caller_token(settings: Settings) -> str | None:
    """The token a caller sends: its own (PSC_TOKEN), else the admin token it holds."""
    own = _read_secret(settings.token, settings.token_file, "PSC_TOKEN")
    return own if own is not None else admin_token(settings)


class JobTokens:
    """Issues and checks job tokens; needs only the admin token (see the module docstring)."""

    def __init__(self, admin: str) -> None:
        self._key = hmac.new(admin.encode(), _JOB_KEY_LABEL, hashlib.sha256).digest()

    def _mac(self, job_id: str) -> str:
        digest = hmac.new(self._key, job_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, job_id: str) -> str:
        return f"{JOB_TOKEN_PREFIX}{job_id}.{self._mac(job_id)}"

    def verify(self, token: str) -> str | None:
        """The job id the token grants, or None if it is not a valid job token."""
        if not token.startswith(JOB_TOKEN_PREFIX):
            return None
        job_id, _, mac = token[len(JOB_TOKEN_PREFIX) :].rpartition(".")
        if not job_id or not hmac.compare_digest(mac.encode(), self._mac(job_id).encode()):
            return None
        return job_id


def bearer(metadata: Any) -> str | None:
    """The bearer token in call metadata, if any."""
    for key, value in metadata or ():
        if key == METADATA_KEY and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def caller_identity(context: grpc.ServicerContext) -> str:
    """Who is calling, for per-client limits: a digest of the token, else the peer's host."""
    token = bearer(context.invocation_metadata())
    if token is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    peer = context.peer()  # "ipv4:127.0.0.1:5432", "ipv6:[::1]:5432", "unix:/path"
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else rest
    return f"host:{host.strip('[]')}"


class TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel, in all four shapes.

    Metadata rather than call credentials, so that it works on plain-text channels too.
    """

    def __init__(self, token: str) -> None:
        self._header = (METADATA_KEY, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return continuation(self._details(details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)
