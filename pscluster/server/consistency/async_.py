"""Asynchronous (Hogwild-style over a server): every push is applied the moment it arrives."""

from __future__ import annotations

from typing import ClassVar

import torch

from pscluster.server.consistency.base import ConsistencyPolicy, Decision, JobContext, Traits
from pscluster.server.domain import Outcome, PushHeader
from pscluster.server.tables.rows import RowGrads


class AsyncPolicy(ConsistencyPolicy):
    """No waiting and no staleness bound; staleness is only measured (``stats.staleness``)."""

    name: ClassVar[str] = "async"
    traits: ClassVar[Traits] = Traits(
        steps=False,
        step_waits_for_all=False,
        clock_bound=False,
        excludable=False,
        waits_for_version=False,
        takes_backup_workers=False,
    )

    def on_push(
        self,
        job: JobContext,
        push: PushHeader,
        grad: torch.Tensor,
        buffer_delta: torch.Tensor | None = None,
        rows: RowGrads | None = None,
    ) -> Decision:
        job.apply(grad, [push], step=False, buffer_delta=buffer_delta, rows=rows)
        return Decision(Outcome.APPLIED)
