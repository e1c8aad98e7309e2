"""Task kinds: what a lease asks a worker to do, and what its completion means.

A lease is handed out by the schedule (:mod:`pscluster.coordinator.leases`); its *kind* says
how it travels to the worker, whether its holder takes part in the job on the shards (sync
barriers and ssp clocks wait only for members), how its result is checked, and what the job
does once it is in. A new kind (predict, distill) is one class here and its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from pscluster.coordinator import store as st
from pscluster.coordinator.core.actions import Action, FailJob, FinishJob, SyncMembers
from pscluster.coordinator.leases import EVAL, TRAIN, Lease, Outcome
from pscluster.coordinator.writes import EpochRecorded
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2


@dataclass(frozen=True)
class TaskResult:
    """What a worker hands in with a finished lease."""

    samples: int = 0  # train: samples trained on
    metrics: dict[str, float] = field(default_factory=dict)  # eval: every measure
    versions: tuple[int, ...] = ()  # eval: each shard's version of what was measured


@dataclass
class JobState:
    """What the core keeps of a running job beside its schedule."""

    job_id: str
    epochs: int
    shards: int
    samples: int = 0  # training samples reported so far (for evaluation records)


class TaskKind(Protocol):
    name: ClassVar[str]  # the lease's kind
    wire: ClassVar[co_pb2.TaskKind.ValueType]
    takes_part: ClassVar[bool]  # its holder is a member of the job on the shards

    def check(self, result: TaskResult, job: JobState) -> None:
        """InvalidArgument if the result cannot be recorded (before anything changes)."""
        ...

    def completed(
        self, job: JobState, lease: Lease, outcome: Outcome, result: TaskResult, wall: float
    ) -> list[Action]:
        """What the job does now that the lease is done (the schedule has moved already)."""
        ...


class Train:
    name: ClassVar[str] = TRAIN
    wire: ClassVar[co_pb2.TaskKind.ValueType] = co_pb2.TASK_KIND_TRAIN
    takes_part: ClassVar[bool] = True

    def check(self, result: TaskResult, job: JobState) -> None:
        return None

    def completed(
        self, job: JobState, lease: Lease, outcome: Outcome, result: TaskResult, wall: float
    ) -> list[Action]:
        return [SyncMembers(job.job_id)]  # its holder no longer trains on the job


_RANGES = {"accuracy": (0.0, 1.0), "mse": (0.0, math.inf), "mae": (0.0, math.inf)}


class Evaluate:
    name: ClassVar[str] = EVAL
    wire: ClassVar[co_pb2.TaskKind.ValueType] = co_pb2.TASK_KIND_EVAL
    takes_part: ClassVar[bool] = False

    def check(self, result: TaskResult, job: JobState) -> None:
        """The loss, only known measures in their ranges, and a version per shard."""
        if "loss" not in result.metrics:
            raise InvalidArgument("an evaluation must report metrics['loss']")
        for name, value in result.metrics.items():
            if name != "loss" and name not in _RANGES:
                raise InvalidArgument(
                    f"metric {name!r} is unknown; expected loss, {', '.join(_RANGES)}"
                )
            low, high = _RANGES.get(name, (-math.inf, math.inf))
            if math.isfinite(value) and not low <= value <= high:
                raise InvalidArgument(f"metrics[{name!r}]={value} is out of range [{low}, {high}]")
        if result.versions and len(result.versions) != job.shards:
            raise InvalidArgument(
                f"versions has {len(result.versions)} entries; the job has {job.shards} shards"
            )

    def completed(
        self, job: JobState, lease: Lease, outcome: Outcome, result: TaskResult, wall: float
    ) -> list[Action]:
        m = result.metrics
        record = st.EpochRecord(
            lease.epoch,
            m.get("accuracy", -1.0),
            m["loss"],
            wall,
            job.samples,
            dict(m),
            result.versions,
        )
        actions: list[Action] = [EpochRecorded(job.job_id, record)]
        bad = {k: v for k, v in m.items() if not math.isfinite(v)}
        if bad:
            shown = ", ".join(f"{k} is {v}" for k, v in bad.items())
            error = (
                f"the model diverged: its test {shown} after epoch {lease.epoch}; lower the "
                "learning rate (or clip gradients in the model)"
            )
            actions.append(FailJob(job.job_id, error))
        elif outcome.final:
            actions.append(FinishJob(job.job_id))
        return actions


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Train(), Evaluate())}


def kind_of(lease: Lease) -> TaskKind:
    return KINDS[lease.kind]
