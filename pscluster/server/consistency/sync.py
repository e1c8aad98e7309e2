"""Synchronous training: a barrier per step, the members' gradients averaged and applied once.

(Sync with backup workers, which closes a step without the slowest few, is in
:mod:`pscluster.server.consistency.backup_sync`.)

The open step is the current version ``v``: every member pushes a gradient computed on ``v``,
the pushes are summed, and when the last one arrives the average is applied (``v`` becomes
``v + 1``) and the workers blocked in ``Pull(min_version=v + 1)`` go on. This is bulk
synchronous SGD: with one worker it is exactly single-process training. The pushes' buffer
changes are summed beside the gradients and handed to the job with them, which averages them
(the members' new running statistics) except over counters such as num_batches_tracked.

A push that carries the change of local steps (its header's ``local_steps``) is summed apart
from the gradients: a step in which mode "auto" changed the local steps between two pushes
holds both kinds, and the job applies each as what it is (see ``JobState.apply``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, ClassVar

import torch

from pscluster.server.consistency.base import ConsistencyPolicy, Decision, JobContext, Traits
from pscluster.server.domain import Outcome, PushHeader
from pscluster.server.tables.rows import RowGrads


class SyncPolicy(ConsistencyPolicy):
    """Subclasses change when a step closes (``is_complete``) and what becomes of a push for a
    closed step (``refuse_old``), e.g. sync with backup workers."""

    name: ClassVar[str] = "sync"
    traits: ClassVar[Traits] = Traits(
        steps=True,
        step_waits_for_all=True,
        clock_bound=False,
        excludable=False,
        waits_for_version=True,
        takes_backup_workers=True,
    )

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None  # kept across steps: fresh memory is slow
        self._change_sum: torch.Tensor | None = None  # the same for local steps' changes
        # The open step's summed buffer changes (small, so made afresh; None: none so far).
        self._buffer_sum: torch.Tensor | None = None
        self._pushes: dict[str, PushHeader] = {}  # by worker, for the open step
        self._rows: list[RowGrads] = []  # the open step's row gradients, one per push

    def on_push(
        self,
        job: JobContext,
        push: PushHeader,
        grad: torch.Tensor,
        buffer_delta: torch.Tensor | None = None,
        rows: RowGrads | None = None,
    ) -> Decision:
        if push.base_version < job.version:
            return self.refuse_old(job, push)
        if push.worker_id in self._pushes:
            # Its earlier push (an earlier lease's, say) holds its place in this step: this one
            # is not taken; the worker waits for the step and pushes this batch again.
            return Decision(
                Outcome.ALREADY_PUSHED,
                reason=(
                    f"worker {push.worker_id} already pushed for step {job.version}; "
                    f"pull min_version={job.version + 1} first"
                ),
                reject_key="already_pushed",
                next_version=job.version + 1,
            )
        if not self._pushes:
            self._buffer_sum = None
            self._rows = []
        self._add(grad, push)
        if rows is not None:
            self._rows.append(rows)
        if buffer_delta is not None:
            if self._buffer_sum is None:
                self._buffer_sum = buffer_delta.clone()
            else:
                self._buffer_sum.add_(buffer_delta)
        # The delta's bytes are in the sum now: the held header need not keep them.
        self._pushes[push.worker_id] = replace(push, buffer_delta=b"", rows=())
        if self.is_complete(job):
            self._apply(job)  # the version is the step's end now
            return Decision(Outcome.APPLIED, next_version=job.version)
        # The next pull waits for this step's barrier: its own parameters again would make
        # its next push stale.
        return Decision(Outcome.BUFFERED, next_version=job.version + 1)

    def _add(self, grad: torch.Tensor, push: PushHeader) -> None:
        """Into the sum of its kind (the gradient is only lent to us: copied, not kept)."""
        local = bool(push.local_steps)
        total = self._change_sum if local else self._sum
        if total is None:
            total = torch.empty_like(grad)
            if local:
                self._change_sum = total
            else:
                self._sum = total
        if self._holds(local):
            total.add_(grad)
        else:
            total.copy_(grad)

    def _holds(self, local: bool) -> bool:
        """Whether the open step holds a push of this kind (local steps' change or not)."""
        return any(bool(p.local_steps) == local for p in self._pushes.values())

    def refuse_old(self, job: JobContext, push: PushHeader) -> Decision:
        return Decision(
            Outcome.STALE,
            reason=(
                f"computed on version {push.base_version} but step {job.version} is open; "
                "pull the current parameters and push again"
            ),
            reject_key="stale",
        )

    def is_complete(self, job: JobContext) -> bool:
        """Every current member has pushed for the open step (and someone has)."""
        return bool(self._pushes) and all(m in self._pushes for m in job.members)

    def on_members_changed(self, job: JobContext) -> None:
        # A member that left (or died) is no longer waited for: the others may be complete.
        if self.is_complete(job):
            self._apply(job)

    def flush(self, job: JobContext) -> None:
        # The open step closes with the pushes it has: they were answered BUFFERED (taken), and
        # their workers' pulls wait for this step's end, which must come under any mode.
        self._apply(job)

    def waiting_for(self, job: JobContext) -> list[str]:
        return [m for m in job.members if m not in self._pushes]

    def version_wait(self, job: JobContext, min_version: int) -> str:
        if min_version == job.version + 1:
            return f"sync barrier for step {job.version} waiting on workers {self.waiting_for(job)}"
        return f"version {min_version} (the shard is at version {job.version})"

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pushes = [_header_json(push) for push in self._pushes.values()]
        if not pushes:
            return {}, {"pushes": []}
        tensors: dict[str, torch.Tensor] = {}
        for name, total, local in (
            ("sum", self._sum, False),
            ("change_sum", self._change_sum, True),
        ):
            if total is not None and self._holds(local):
                tensors[name] = total.clone()
        if self._buffer_sum is not None:
            tensors["buffer_sum"] = self._buffer_sum.clone()
        for table, (ids, grads) in RowGrads.merged(self._rows).blocks.items():
            tensors[f"rows.{table}.ids"], tensors[f"rows.{table}.grads"] = ids, grads
        return tensors, {"pushes": pushes}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._pushes = {p["worker_id"]: PushHeader(**p) for p in meta.get("pushes", [])}
        held = tensors.get("sum")
        self._sum = None if held is None else held.clone()
        held = tensors.get("change_sum")  # absent: no local steps in the step
        self._change_sum = None if held is None else held.clone()
        held = tensors.get("buffer_sum")  # absent: no change so far (or an older checkpoint)
        self._buffer_sum = None if held is None else held.clone()
        rows = RowGrads()
        for name, ids in tensors.items():
            if name.startswith("rows.") and name.endswith(".ids"):
                table = int(name.split(".")[1])
                rows.blocks[table] = (ids.clone(), tensors[f"rows.{table}.grads"].clone())
        self._rows = [rows] if rows.blocks else []

    def _apply(self, job: JobContext) -> None:
        pushes, buffer_sum = list(self._pushes.values()), self._buffer_sum
        grad = self._sum if self._holds(local=False) else None
        change = self._change_sum if self._holds(local=True) else None
        rows = RowGrads.merged(self._rows) if self._rows else None
        self._pushes, self._buffer_sum, self._rows = {}, None, []
        if not pushes:
            return
        # The average over the pushes that made the step: a push of the other kind counts as
        # zero in each part, as rows a push left out do.
        for part in (grad, change):
            if part is not None and len(pushes) > 1:
                part.div_(len(pushes))
        if rows is not None and len(pushes) > 1:
            rows.scale_(1 / len(pushes))
        # The buffer sum goes as a sum: the job averages it, except over its counters.
        first, extra = (grad, change) if grad is not None else (change, None)
        assert first is not None
        job.apply(first, pushes, step=True, buffer_delta=buffer_sum, rows=rows, change=extra)


def _header_json(push: PushHeader) -> dict[str, Any]:
    """A held push's header as JSON (its buffer delta is already in the sum)."""
    data = asdict(push)
    del data["buffer_delta"], data["rows"]
    return data
