"""Domain errors and the one place that turns them into gRPC status codes.

Logic modules raise these and know nothing about gRPC; servicers wrap their methods with
:func:`grpc_errors`, so every handler maps errors the same way.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from pscluster.logs import log_context

log = logging.getLogger(__name__)


class PSError(Exception):
    """Base of errors that a caller can act on; ``code`` is the gRPC status they map to."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(PSError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PSError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PSError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(PSError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(PSError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(PSError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(PSError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


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
                context.abort(e.code, str(e))
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
            context.abort(e.code, str(e))
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
