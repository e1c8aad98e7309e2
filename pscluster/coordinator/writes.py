"""The writes the scheduling core asks for, as data: one small record each, never a rewrite.

The core decides (a lease granted, a partition done, an epoch evaluated) and returns these;
the store writer applies whatever is queued in one transaction (group commit), so that a
coordinator serving hundreds of workers pays one commit for many decisions, and the reply
to a worker goes out only once what it reported is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from pscluster.coordinator.store import EpochRecord, EventRecord, LeaseRecord, StepRecord


@dataclass(frozen=True)
class LeaseSaved:
    lease: LeaseRecord  # granted, or changed (cut short): replaces the stored one


@dataclass(frozen=True)
class LeaseDropped:
    lease_id: str


@dataclass(frozen=True)
class ProgressSaved:
    """A job's place in its schedule: what a restarted coordinator resumes from."""

    job_id: str
    epoch: int
    done_partitions: Sequence[int]
    pending_evals: Sequence[int]


@dataclass(frozen=True)
class EpochRecorded:
    job_id: str
    record: EpochRecord


@dataclass(frozen=True)
class StepsAppended:
    job_id: str
    steps: Sequence[StepRecord]


@dataclass(frozen=True)
class EventAppended:
    job_id: str
    event: EventRecord


@dataclass(frozen=True)
class BatchesDropped:
    """Batches a worker trained nothing on, by reason (added to the job's totals)."""

    job_id: str
    batches: dict[str, int]


@dataclass(frozen=True)
class JobUpdated:
    """Other fields of the job row (status line, generation, ...), without reading it back."""

    job_id: str
    changes: dict[str, Any]


Write: TypeAlias = (
    LeaseSaved
    | LeaseDropped
    | ProgressSaved
    | EpochRecorded
    | StepsAppended
    | EventAppended
    | BatchesDropped
    | JobUpdated
)
