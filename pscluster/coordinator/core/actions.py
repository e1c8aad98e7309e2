"""What the scheduling core asks the executor to do: store writes, and these.

The core never performs I/O; every decision that needs a shard, a thread or a file comes back
from it as one of these small records (or a store write, :mod:`pscluster.coordinator.writes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypeAlias

from pscluster.coordinator.lease_values import Lease
from pscluster.coordinator.store import EventRecord, LeaseRecord
from pscluster.coordinator.writes import EventAppended, LeaseSaved, Write
from pscluster.server.consistency import TrialStep


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


@dataclass(frozen=True)
class SwitchConsistency:
    """Mode "auto" chose another consistency for the job: tell each of its shards (they
    ignore a ``revision`` older than the one they hold, so a late send undoes nothing)."""

    job_id: str
    mode: str
    staleness: int
    backup_workers: int
    revision: int
    trial: TrialStep = TrialStep.NONE  # what the shards do to their trial copy
    local_steps: int = 1  # what the shards' pulls tell the workers to take per push


Action: TypeAlias = Write | SyncMembers | FinishJob | FailJob | SwitchConsistency


def writes(actions: list[Action]) -> list[Write]:
    """The store writes among ``actions``, in order."""
    return [
        a
        for a in actions
        if not isinstance(a, (SyncMembers, FinishJob, FailJob, SwitchConsistency))
    ]


def lease_saved(lease: Lease) -> LeaseSaved:
    """The store write that keeps a granted (or cut short) lease across a restart."""
    return LeaseSaved(LeaseRecord(**asdict(lease)))


def event(job_id: str, wall: float, kind: str, worker_id: str, message: str) -> EventAppended:
    """A line for the job's event log (what ``pscluster events`` shows the user)."""
    return EventAppended(job_id, EventRecord(wall, kind, worker_id, message))


def one_sync_per_job(actions: list[Action]) -> list[Action]:
    """One membership sync per job is enough (the executor sends the latest roster)."""
    seen: set[str] = set()
    out: list[Action] = []
    for a in actions:
        if isinstance(a, SyncMembers):
            if a.job_id in seen:
                continue
            seen.add(a.job_id)
        out.append(a)
    return out
