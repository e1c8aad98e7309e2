"""What the scheduling core asks the executor to do: store writes, and these.

The core never performs I/O; every decision that needs a shard, a thread or a file comes back
from it as one of these small records (or a store write, :mod:`pscluster.coordinator.writes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from pscluster.coordinator.writes import Write


@dataclass(frozen=True)
class SyncMembers:
    """The job's membership on its shards changed: send the current roster (the executor
    coalesces: many requests before one send cost one SetMembers round)."""

    job_id: str


@dataclass(frozen=True)
class FinishJob:
    """Training and the final evaluation are done: save the model, free the shards."""

    job_id: str


@dataclass(frozen=True)
class FailJob:
    job_id: str
    error: str


Action: TypeAlias = Write | SyncMembers | FinishJob | FailJob


def writes(actions: list[Action]) -> list[Write]:
    """The store writes among ``actions``, in order."""
    return [a for a in actions if not isinstance(a, (SyncMembers, FinishJob, FailJob))]
