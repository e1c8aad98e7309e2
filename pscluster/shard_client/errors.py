"""One error for every failed call to a shard: which shard, and what it (or the channel) said.

A subclass of the domain's :class:`~pscluster.errors.Unavailable`, so that a coordinator call
that needed a shard answers UNAVAILABLE naming it, through the servicers' one mapping table.
:class:`LayoutMovedError` is the one kind a caller must tell apart by more than the status:
the job's ranges moved between shards, and the caller's plan of it is out of date.
"""

from __future__ import annotations

import grpc

from pscluster.errors import LAYOUT_MOVED, Unavailable

# A shard that answers these may answer later: it is down, restarting, cut off, or it held
# the call (a sync barrier) past its deadline.
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ShardError(Unavailable):
    """A call to the shard at ``address`` failed with ``status`` (and the shard's ``details``)."""

    def __init__(self, address: str, status: grpc.StatusCode, details: str) -> None:
        self.address = address
        self.status = status
        self.details = details
        if status in UNREACHABLE:
            text = f"shard {address} unreachable: {details or status.name}"
        else:
            text = f"shard {address} answered {status.name}: {details}"
        super().__init__(text)

    @property
    def unreachable(self) -> bool:
        """The same call may succeed later (see :data:`UNREACHABLE`)."""
        return self.status in UNREACHABLE


class LayoutMovedError(ShardError):
    """The shard answered "layout moved" (FAILED_PRECONDITION): the job moved to other
    shards, or is at another layout generation here. Never retried as is (it is not
    :attr:`unreachable`): fetch the job's plan again and use the shards it names."""


def shard_error(address: str, error: grpc.RpcError) -> ShardError:
    """The ShardError for a failed gRPC call to ``address`` (a LayoutMovedError for "layout
    moved")."""
    if isinstance(error, grpc.Call):
        status, details = error.code(), error.details() or ""
        if status == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(LAYOUT_MOVED):
            return LayoutMovedError(address, status, details)
        return ShardError(address, status, details)
    return ShardError(address, grpc.StatusCode.UNKNOWN, str(error))
