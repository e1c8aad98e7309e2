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

See docs/reliability.md, "Security model", for who may call what.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections.abc import Callable, Iterator
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


class Scope(enum.Enum):
    OPEN = "open"  # no token needed (health checks: orchestrator probes carry none)
    JOB = "job"  # the admin token, or the token of the job the request names
    ADMIN = "admin"  # the admin token only; every method not listed is ADMIN


_COORDINATOR = "/pscluster.v1.Coordinator/"
# Reads and control of one job, for its submitter. The worker RPCs that name a job
# (ReportProgress, ReportFailure) stay admin-only: they act as a worker, not as the owner.
JOB_SCOPED = frozenset(
    _COORDINATOR + m
    for m in (
        "GetJob",
        "CancelJob",
        "GetMetrics",
        "FetchModel",
        "FetchPredictions",
        "LookupRows",
        "GetJobPlan",
        "FetchBlob",
    )
)
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def scope_of(method: str) -> Scope:
    if method in OPEN_METHODS:
        return Scope.OPEN
    if method in JOB_SCOPED:
        return Scope.JOB
    return Scope.ADMIN


def _deny(
    handler: grpc.RpcMethodHandler[Any, Any] | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the method's own shape that answers ``code`` without reading the request."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_stream_rpc_method_handler(abort)


def _only_job(
    handler: grpc.RpcMethodHandler[Any, Any], job_id: str, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """Check, after decoding, that the request names the token's job.

    A server interceptor sees only the method and metadata, so the check wraps the handler's
    behaviour instead. Job-scoped methods are unary-request (unary or streamed reply).
    """
    behaviour: Callable[[Any, grpc.ServicerContext], Any] | None = (
        handler.unary_stream if handler.response_streaming else handler.unary_unary
    )
    if handler.request_streaming or behaviour is None:
        return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the admin token")
    call = behaviour

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if not hasattr(request, "job_id"):
            # Not a decoded message (DecodeGuard's marker for garbage): the inner handler
            # answers INVALID_ARGUMENT, which says more than a refusal would.
            return call(request, context)
        asked = request.job_id
        if asked != job_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token is for job {job_id} and cannot reach job {asked!r}; use that "
                "job's token or the admin token",
            )
        return call(request, context)

    make = (
        grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(checked, handler.request_deserializer, handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Checks the bearer token of every call against the admin token and job tokens."""

    def __init__(self, admin: str) -> None:
        self._admin_digest = hashlib.sha256(admin.encode()).digest()
        self.jobs = JobTokens(admin)

    def _is_admin(self, token: str) -> bool:
        # Digests first: equal lengths, so the comparison leaks nothing, not even the length.
        digest = hashlib.sha256(token.encode()).digest()
        return hmac.compare_digest(digest, self._admin_digest)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        scope = scope_of(method)
        if scope is Scope.OPEN:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        token = bearer(handler_call_details.invocation_metadata)
        if token is None:
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a token: this cluster requires `authorization: Bearer <token>` "
                "(set PSC_TOKEN or PSC_TOKEN_FILE, or pass token= to Client)",
            )
        if self._is_admin(token):
            return handler
        job_id = self.jobs.verify(token)
        if job_id is None:
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "the token is not valid for this cluster: expected its admin token or a job "
                "token returned by SubmitJob (check PSC_TOKEN / PSC_TOKEN_FILE)",
            )
        if scope is Scope.ADMIN or handler is None:
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a job token (job {job_id}) may only read or cancel its own job; {method} "
                "needs the admin token",
            )
        return _only_job(handler, job_id, method)


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
