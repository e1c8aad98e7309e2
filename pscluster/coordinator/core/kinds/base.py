"""Task kinds: what a lease asks a worker to do, and what its completion means.

A lease is handed out by the schedule (:mod:`pscluster.coordinator.leases`); its *kind* says
how it travels to the worker, whether its holder takes part in the job on the shards (sync
barriers and ssp clocks wait only for members), how its result is checked, and what the job
does once it is in. A new kind (predict, distill) is one module in this package, registered
in :data:`KINDS`, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from pscluster.coordinator.core.actions import Action
from pscluster.coordinator.lease_values import Lease, Outcome
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
