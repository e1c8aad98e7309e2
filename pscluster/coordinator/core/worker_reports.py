"""What a worker's report of training steps and dropped batches becomes: store writes and an
event, after the steps are checked against the job (before anything is recorded).

A lease's progress in the same report is the straggler relief's business
(:mod:`pscluster.coordinator.core.relief_actions`). Pure, under the caller's lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pscluster.coordinator import store as st
from pscluster.coordinator.core.actions import Action, event
from pscluster.coordinator.core.kinds import JobState
from pscluster.coordinator.writes import BatchesDropped, StepsAppended
from pscluster.errors import InvalidArgument


def check_steps(job: JobState, steps: Sequence[st.StepRecord]) -> None:
    """InvalidArgument, naming the step, if one is for an epoch the job does not have."""
    for i, s in enumerate(steps):
        if s.epoch >= job.epochs:
            raise InvalidArgument(
                f"steps[{i}].epoch={s.epoch} is out of range; the job has epochs "
                f"0..{job.epochs - 1}"
            )


def steps_recorded(job: JobState, steps: Sequence[st.StepRecord]) -> list[Action]:
    """Count the steps' samples in (evaluation records carry them) and append the steps."""
    if not steps:
        return []
    job.samples += sum(s.samples for s in steps)
    return [StepsAppended(job.job_id, list(steps))]


def batches_dropped(
    job_id: str, worker_id: str, dropped: Mapping[str, int], wall: float
) -> list[Action]:
    """Batches the worker trained nothing on, by reason: added to the job's totals, with
    an event so that the job's log says which worker dropped them and why."""
    if not dropped:
        return []
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items()))
    message = (
        f"worker {worker_id} dropped {sum(dropped.values())} batch(es) without "
        f"training on them: {counts}"
    )
    return [
        BatchesDropped(job_id, dict(dropped)),
        event(job_id, wall, "batches_dropped", worker_id, message),
    ]
