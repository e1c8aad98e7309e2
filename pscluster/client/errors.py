"""The SDK's exceptions: a gRPC status becomes one readable error that says what to do.

Users of the SDK should never have to catch ``grpc.RpcError`` or read a gRPC debug string;
they get a :class:`PSClusterError` whose ``str()`` is the coordinator's message (or, when
the coordinator cannot be reached, a hint on how to start one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from pscluster.client.info import JobInfo


class PSClusterError(Exception):
    """Anything the cluster refused or could not do; ``code`` is the gRPC status behind it.

    ``code`` is None for errors found by the SDK before anything was sent.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidJobError(PSClusterError, ValueError):
    """The job (spec, model or data) is wrong; nothing was submitted or changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)


class JobNotFoundError(PSClusterError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ClusterUnavailableError(PSClusterError, ConnectionError):
    """The coordinator did not answer: it is not running, or not at this address."""


class JobFailed(PSClusterError):
    """The job ended as failed or cancelled; ``info`` holds its final state and error."""

    def __init__(self, info: JobInfo) -> None:
        if info.state == "cancelled":
            message = f"job {info.job_id} was cancelled"
        else:
            message = f"job {info.job_id} failed: {info.error or info.status_message or '?'}"
        super().__init__(message)
        self.info = info


def from_rpc_error(error: grpc.RpcError, address: str, what: str) -> PSClusterError:
    """Turn a failed call into the SDK exception for its status code.

    ``what`` names the operation ("submit the job", "get job abc") so that a message read
    out of context still says which call failed.
    """
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE and _is_connection_failure(details):
        return ClusterUnavailableError(
            f"cannot reach the coordinator at {address} to {what} ({details}); is the cluster "
            "running? Start one with `pscluster up --local`, or pass the right address "
            "(--address / PSC_COORDINATOR)",
            code,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidJobError(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return JobNotFoundError(details, code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PSClusterError(f"timed out trying to {what} at {address}: {details}", code)
    return PSClusterError(f"could not {what}: {details} ({code.name})", code)


def _is_connection_failure(details: str) -> bool:
    # gRPC's own connection errors read like this; an UNAVAILABLE raised by the coordinator's
    # logic (a shard is down, ...) carries its own message, which is passed through as it is.
    lowered = details.lower()
    return any(
        hint in lowered
        for hint in ("failed to connect", "connection refused", "socket closed", "dns resolution")
    )
