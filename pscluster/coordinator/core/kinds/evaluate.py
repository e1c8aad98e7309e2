"""Evaluate: the job's loss and metric on its test set, for one epoch; recorded, and the
end of the job when it is the last epoch's (or its failure, when the model diverged)."""

from __future__ import annotations

import math
from typing import ClassVar

from pscluster.coordinator import store as st
from pscluster.coordinator.core.actions import Action, FailJob, FinishJob
from pscluster.coordinator.core.kinds.base import JobState, TaskResult
from pscluster.coordinator.lease_values import EVAL, Lease, Outcome
from pscluster.coordinator.writes import EpochRecorded
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

_RANGES = {
    "accuracy": (0.0, 1.0),
    "auc": (0.0, 1.0),
    "mse": (0.0, math.inf),
    "mae": (0.0, math.inf),
}


class Evaluate:
    name: ClassVar[str] = EVAL
    wire: ClassVar[co_pb2.TaskKind.ValueType] = co_pb2.TASK_KIND_EVAL
    takes_part: ClassVar[bool] = False

    def check(self, result: TaskResult, job: JobState) -> None:
        """The loss and only known measures in their ranges. The versions (one per shard
        the evaluation pulled) are not checked against the job's shard count: a move between
        shards (ScaleShards) between its pull and its report changes the count, and the final
        save then sees versions that differ and evaluates again (pscluster.coordinator.finish)."""
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
