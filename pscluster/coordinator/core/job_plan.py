"""A job as the scheduling core is given it and reports on it: the plan it is scheduled from
(with the progress a restarted coordinator resumes from), when it last moved, and the error
for a job the core is not running.

Apart from :mod:`pscluster.coordinator.core.scheduler` because these are the core's interface
to the job manager, the predict jobs, the runtime's stall diagnosis and the task handlers:
they build plans and read activity without needing the scheduler's rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pscluster.coordinator.lease_values import TRAIN
from pscluster.coordinator.stragglers import StragglerSettings
from pscluster.errors import FailedPrecondition


@dataclass
class Activity:
    """When a running job last moved, for the stall diagnosis (monotonic seconds)."""

    last_progress: float
    last_lease: float


@dataclass(frozen=True)
class JobPlan:
    """A job to schedule, with the progress a restarted coordinator resumes from."""

    job_id: str
    epochs: int
    partitions: int
    mode: str
    stragglers: StragglerSettings
    backup_workers: int = 0
    batch_counts: Sequence[int] | None = None
    epoch: int = 0
    done: Sequence[int] = ()
    evals: Sequence[int] = ()
    samples: int = 0
    kind: str = TRAIN  # what its units are leased as: TRAIN, or PREDICT (no evaluations)
    # Mode auto may undo a stale trial (shards keep a copy: not of embedding tables).
    undoable: bool = True
    # The most local steps mode auto may give the workers (1: none; not with tables, nor
    # with dgc, nor past PSC_AUTO_MAX_LOCAL_STEPS).
    local_steps: int = 8


class NotScheduled(FailedPrecondition):
    """The job is not running here (pending, ended, or unknown: the caller says which)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is not running; progress is no longer recorded")
        self.job_id = job_id
