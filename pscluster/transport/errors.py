"""The one place that turns domain errors (:mod:`pscluster.errors`) into gRPC status codes.

Logic modules raise domain errors and know nothing about gRPC; servicers wrap their methods
with :func:`grpc_errors`, so every handler maps errors the same way, through :data:`STATUS`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from pscluster.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PSError,
    ResourceExhausted,
    Unavailable,
)
from pscluster.logs import log_context

log = logging.getLogger(__name__)


# The one table from domain errors to status codes. Looked up along the exception's MRO, so
# a subclass (the coordinator's ShardError is an Unavailable) maps as its base does.
STATUS: dict[type[PSError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(error: PSError) -> grpc.StatusCode:
    """The status code a domain error answers with (INTERNAL for one the table lacks)."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Wrap a servicer method: a PSError aborts with its code, anything else with INTERNAL.

    Works for unary and server-streaming handlers (generators are wrapped lazily). What the
    handler logs carries the request's ``job_id`` and ``worker_id`` (see pscluster.logs).
    """
    import inspect

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def gen_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                with log_context(**_ids(request)):
                    yield from method(self, request, context)
            except PSError as e:
                context.abort(status_of(e), str(e))
            except grpc.RpcError:
                if context.is_active():
                    raise
                log.debug("%s: the caller cancelled the call", method.__name__)
            except Exception as e:  # a bug: log it, answer INTERNAL rather than hang the caller
                log.exception("unhandled error in %s", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with log_context(**_ids(request)):
                return method(self, request, context)
        except PSError as e:
            context.abort(status_of(e), str(e))
        except grpc.RpcError:
            # A client stream the caller broke off (a worker abandoning a push it was still
            # sending): nothing of it was applied, and nobody waits for an answer.
            if context.is_active():
                raise
            log.debug("%s: the caller cancelled the call", method.__name__)
            return None
        except Exception as e:
            log.exception("unhandled error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    return wrapper  # type: ignore[return-value]


def _ids(request: Any) -> dict[str, str]:
    """The job and worker a request names, for its log records (streams name none here)."""
    ids = {}
    for field in ("job_id", "worker_id"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            ids[field] = value
    return ids
