"""Train: one unit of a partition's batches; its holder is a member on the shards."""

from __future__ import annotations

from typing import ClassVar

from pscluster.coordinator.core.actions import Action
from pscluster.coordinator.core.kinds.base import JobState, TaskResult
from pscluster.coordinator.lease_values import TRAIN, Lease, Outcome
from pscluster.v1 import coordinator_pb2 as co_pb2


class Train:
    name: ClassVar[str] = TRAIN
    wire: ClassVar[co_pb2.TaskKind.ValueType] = co_pb2.TASK_KIND_TRAIN
    takes_part: ClassVar[bool] = True

    def check(self, result: TaskResult, job: JobState) -> None:
        return None

    def completed(
        self, job: JobState, lease: Lease, outcome: Outcome, result: TaskResult, wall: float
    ) -> list[Action]:
        # Its holder stays a member until it asks for work again (the scheduler sees to
        # it): most take the job's next unit at once, with no membership change.
        return []
