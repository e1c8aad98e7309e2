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


def compact(writes: Sequence[Write]) -> list[Write]:
    """The same end state in fewer statements: a batch of many callers' writes often saves
    one job's progress many times (only the last one counts), appends its steps in pieces
    (one append), and grants and drops the same lease (only the last word counts)."""
    last_progress: dict[str, int] = {}
    last_lease: dict[str, int] = {}
    for i, w in enumerate(writes):
        if isinstance(w, ProgressSaved):
            last_progress[w.job_id] = i
        elif isinstance(w, LeaseSaved):
            last_lease[w.lease.lease_id] = i
        elif isinstance(w, LeaseDropped):
            last_lease[w.lease_id] = i
    out: list[Write] = []
    steps: dict[str, StepsAppended] = {}
    for i, w in enumerate(writes):
        if isinstance(w, ProgressSaved) and last_progress[w.job_id] != i:
            continue
        if isinstance(w, LeaseSaved) and last_lease[w.lease.lease_id] != i:
            continue
        if isinstance(w, LeaseDropped) and last_lease[w.lease_id] != i:
            continue
        if isinstance(w, StepsAppended):
            merged = steps.get(w.job_id)
            if merged is not None:  # steps keep their order of arrival within the job
                steps[w.job_id] = StepsAppended(w.job_id, [*merged.steps, *w.steps])
                continue
            steps[w.job_id] = w
            out.append(w)  # replaced by the merged record below
            continue
        out.append(w)
    return [steps[w.job_id] if isinstance(w, StepsAppended) else w for w in out]
