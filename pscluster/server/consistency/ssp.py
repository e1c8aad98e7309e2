"""Stale synchronous parallel (Ho et al., NIPS 2013) with staleness bound ``s``.

Clocks count each member's accepted pushes; the shard clock is the slowest member's. Pushes are
applied on arrival, as in async, but a worker may not run more than ``s`` clocks ahead of the
slowest: its pull waits until the slowest catches up. A push computed on parameters more than
``s`` clocks old is refused; the pull bound makes that rare, it is the safety net for a worker
that was cut off and comes back with an old gradient.

A straggler the coordinator excludes is not counted in the slowest clock (see
:mod:`pscluster.server.clocks`), so the others stop waiting for it; its pushes still face the
bound, and each pull it is granted brings its clock up to the shard clock (the job does that
bookkeeping), so it is back within the bound after reading the current parameters.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from pscluster.errors import InvalidArgument
from pscluster.server.consistency.base import ConsistencyPolicy, Decision, JobContext, Traits
from pscluster.server.domain import Outcome, PushHeader
from pscluster.server.tables.rows import RowGrads


class SSPPolicy(ConsistencyPolicy):
    name: ClassVar[str] = "ssp"
    traits: ClassVar[Traits] = Traits(
        steps=False,
        step_waits_for_all=False,
        clock_bound=True,
        excludable=True,
        waits_for_version=False,
        takes_backup_workers=False,
    )

    def __init__(self, *, staleness: int) -> None:
        if staleness < 0:
            raise InvalidArgument(f"ssp staleness must be >= 0, got {staleness}")
        self.staleness = staleness

    @classmethod
    def create(cls, *, staleness: int, backup_workers: int) -> SSPPolicy:
        return cls(staleness=staleness)

    def on_push(
        self,
        job: JobContext,
        push: PushHeader,
        grad: torch.Tensor,
        buffer_delta: torch.Tensor | None = None,
        rows: RowGrads | None = None,
    ) -> Decision:
        if push.base_clock + self.staleness < job.clock:
            return Decision(
                Outcome.STALE,
                reason=(
                    f"computed on clock {push.base_clock} but the shard clock is {job.clock} "
                    f"and the ssp bound is {self.staleness}; pull again"
                ),
                reject_key="stale",
            )
        job.apply(grad, [push], step=False, buffer_delta=buffer_delta, rows=rows)
        return Decision(Outcome.APPLIED)

    def pull_blocker(self, job: JobContext, worker_id: str) -> str | None:
        lead = job.clock_of(worker_id) - job.clock
        if lead <= self.staleness:
            return None
        slowest = job.slowest()
        behind = f"the slowest worker {slowest[0]} at clock {slowest[1]}" if slowest else "none"
        return (
            f"the ssp bound s={self.staleness}: worker {worker_id} is at clock "
            f"{job.clock_of(worker_id)}, {lead} ahead of {behind}"
        )

    def on_pull_granted(self, job: JobContext, worker_id: str) -> None:
        job.record_clock_lead(max(0, job.clock_of(worker_id) - job.clock))
