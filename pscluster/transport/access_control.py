"""Who may call what: each RPC's scope, and the server interceptor that enforces it.

The tokens themselves (reading them from the settings, deriving and checking job tokens,
finding the bearer token in call metadata) are :mod:`pscluster.transport.auth`'s, which
callers need too; this is the servers' side only, so a reader of the access rules sees them
without the token plumbing, and a caller never imports the server's handlers.

See docs/reliability.md, "Security model", for who may call what.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import grpc

from pscluster.transport.auth import JobTokens, bearer


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
