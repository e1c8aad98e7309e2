"""Domain errors: what went wrong, in terms a caller can act on, with no transport attached.

Logic modules (shards, the coordinator, model and data code) raise these and know nothing
about gRPC. The servicers turn them into status codes in one place,
:func:`pscluster.transport.errors.grpc_errors`, as Flower's servicers map ``ValueError`` to
``FAILED_PRECONDITION``: so the same logic runs unchanged in-process, in tests and behind any
transport.
"""

from __future__ import annotations

__all__ = [
    "LAYOUT_MOVED",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LayoutMoved",
    "NotFound",
    "OutOfRange",
    "PSError",
    "ResourceExhausted",
    "Unavailable",
]


class PSError(Exception):
    """Base of errors that a caller can act on (anything else is a bug)."""


class InvalidArgument(PSError):
    """The request is malformed; the same request will always be refused."""


class NotFound(PSError):
    """What the request names (a job, a worker, a lease) is not here."""


class OutOfRange(InvalidArgument):
    """The request reaches past the end of what it names (a byte range of a blob)."""


class AlreadyExists(PSError):
    """What the request would create is already there."""


class FailedPrecondition(PSError):
    """The request is well formed but the state it needs does not hold (yet)."""


# How the details of every "layout moved" refusal begin: a shard's client tells this
# FAILED_PRECONDITION from the others by it alone (the status carries no type).
LAYOUT_MOVED = "layout moved"


class LayoutMoved(FailedPrecondition):
    """The job's ranges moved between shards (live re-layout): the caller's plan of the job is
    out of date. Not retried as is; the caller fetches the job's plan again and goes on with
    the shards it names, at ``generation``."""

    def __init__(self, job_id: str, generation: int, situation: str) -> None:
        self.job_id = job_id
        self.generation = generation
        super().__init__(
            f"{LAYOUT_MOVED}: job {job_id} {situation}; fetch the job's plan again "
            f"(layout generation {generation})"
        )


class ResourceExhausted(PSError):
    """The request asks for more than this process may give (memory, a quota)."""


class Unavailable(PSError):
    """Something the request needs cannot be reached now; trying again later may work."""


class DeadlineExceeded(PSError):
    """A wait the request asked for ran out of time; the message says what it waited for."""
