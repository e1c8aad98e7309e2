"""Predict: one partition of a predict job's inputs scored; the job is finished once the last
partition is in. Its holder takes no part in anything on the shards (a predict job has no
shards), and its outputs were stored before the completion reached the core
(:mod:`pscluster.coordinator.predictions`), so the completion only counts the rows."""

from __future__ import annotations

from typing import ClassVar

from pscluster.coordinator.core.actions import Action, FinishJob
from pscluster.coordinator.core.kinds.base import JobState, TaskResult
from pscluster.coordinator.lease_values import PREDICT, Lease, Outcome
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2


class Predict:
    name: ClassVar[str] = PREDICT
    wire: ClassVar[co_pb2.TaskKind.ValueType] = co_pb2.TASK_KIND_PREDICT
    takes_part: ClassVar[bool] = False

    def check(self, result: TaskResult, job: JobState) -> None:
        """A scored partition has rows (no partition is empty: there are no more partitions
        than rows)."""
        if result.samples < 1:
            raise InvalidArgument("a scored partition must report the rows it scored (>= 1)")

    def completed(
        self, job: JobState, lease: Lease, outcome: Outcome, result: TaskResult, wall: float
    ) -> list[Action]:
        return [FinishJob(job.job_id)] if outcome.final else []
