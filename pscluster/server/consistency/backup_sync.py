"""Synchronous training with backup workers (Chen et al. 2016, "Revisiting Distributed
Synchronous SGD").

A step closes as soon as the first ``max(1, N - b)`` of the ``N`` members have pushed for it,
and the average of those pushes is applied: the ``b`` slowest workers of a step no longer hold
up everyone else. A push that arrives for a step that has already closed is late: it is dropped
(counted as ``pushes_rejected["late"]``) and its worker simply pulls and goes on with its next
batch, the way a backup worker's gradient is discarded in the paper.
"""

from __future__ import annotations

from typing import ClassVar

from pscluster.errors import InvalidArgument
from pscluster.server.consistency.base import Decision, JobContext, Traits
from pscluster.server.consistency.sync import SyncPolicy
from pscluster.server.domain import Outcome, PushHeader


class BackupSyncPolicy(SyncPolicy):
    name: ClassVar[str] = "sync"
    traits: ClassVar[Traits] = Traits(
        steps=True,
        step_waits_for_all=False,
        clock_bound=False,
        excludable=False,
        waits_for_version=True,
        takes_backup_workers=True,
    )

    @classmethod
    def create(cls, *, staleness: int, backup_workers: int) -> BackupSyncPolicy:
        return cls(backup_workers=backup_workers)

    def __init__(self, *, backup_workers: int) -> None:
        if backup_workers < 1:
            raise InvalidArgument(
                f"backup_workers must be >= 1 for sync with backup workers, got {backup_workers}"
            )
        super().__init__()
        self.backup_workers = backup_workers

    def needed(self, job: JobContext) -> int:
        """Pushes that close a step: all members but ``b``, and at least one."""
        return max(1, len(job.members) - self.backup_workers)

    def is_complete(self, job: JobContext) -> bool:
        # A push from a member that has since left still counts: it was computed on this step.
        return len(self._pushes) >= self.needed(job)

    def refuse_old(self, job: JobContext, push: PushHeader) -> Decision:
        return Decision(
            Outcome.LATE,
            reason=(
                f"step {push.base_version} closed without this push (the first "
                f"{self.needed(job)} of {len(job.members)} members made it; "
                f"backup_workers={self.backup_workers}); it was dropped: pull the current "
                f"parameters (version {job.version}) and go on with the next batch"
            ),
            reject_key="late",
        )

    def version_wait(self, job: JobContext, min_version: int) -> str:
        if min_version == job.version + 1:
            return (
                f"sync step {job.version} with backup workers: {len(self._pushes)} of the "
                f"{self.needed(job)} pushes it needs are in; not yet pushed: "
                f"{self.waiting_for(job)}"
            )
        return super().version_wait(job, min_version)
