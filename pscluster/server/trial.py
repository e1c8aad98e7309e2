"""Mode "auto"'s trial copy of a job's learned state on a shard, so that a stale setting the
loss judges harmful is undone rather than trained out of.

Async at a learning rate tuned for sync can leave the loss far above where it began (the
digits job at lr 0.2: a mean loss of 4.5-7.5 from 1.8 in two blocks of 32 steps); sync then
spent 11-16 epochs climbing back, against 3-6 from the start (bench/auto.py). The coordinator
therefore switches into a stale setting with ``TRIAL_BEGIN``: each shard copies what training
changes (the values, the model's buffers, the optimizer's state) as the switch takes effect.
A verdict against the setting comes with ``TRIAL_UNDO``: the state becomes the copy again, at
a new version (versions never go back: a worker's pull sees the change like any update). A
``TRIAL_BEGIN`` while a copy is held takes it again (the coordinator moves it up to each good
block below the loss where it was taken); leaving the stale setting without a verdict comes with
``TRIAL_END`` and the copy goes.

What does not go back: the members' clocks, the push ledger (retries are still answered),
the counters and the membership. A job with embedding tables is not copied (its rows may be
gigabytes): its trials cannot be undone, which the coordinator knows and says.

The copy is state like the values: checkpoints hold it (``trial.*`` tensors), and the switch
records it in the journal, so recovery has the same copy. A move does not carry it: every
adopting shard starts without one, so an undo after a move is refused on all of them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pscluster.model.optimizer import FlatOptimizer, OptimizerSpec
from pscluster.server.job_buffers import JobBuffers

__all__ = ["PREFIX", "TrialCopy", "copy_bytes"]

PREFIX = "trial."
_VALUES, _BUFFERS, _OPT = "values", "buffers", "opt."


@dataclass(frozen=True)
class TrialCopy:
    values: torch.Tensor
    buffers: torch.Tensor
    opt_tensors: dict[str, torch.Tensor]
    opt_scalars: dict[str, float | None]

    @classmethod
    def take(cls, opt: FlatOptimizer, buffers: JobBuffers) -> TrialCopy:
        tensors, scalars = opt.state_tensors(copy=True)
        return cls(opt.values.clone(), buffers.values.clone(), tensors, scalars)

    def restore_into(self, opt: FlatOptimizer, buffers: JobBuffers) -> None:
        """The values, buffers and optimizer state become the copy's (the copy stays intact:
        the caller drops it)."""
        opt.values.copy_(self.values)
        buffers.values.copy_(self.buffers)
        opt.reset_state()  # state the trial created (a first momentum buffer) goes too
        opt.load_state_tensors(
            {k: v.clone() for k, v in self.opt_tensors.items()}, dict(self.opt_scalars)
        )

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors under ``trial.`` and the JSON a checkpoint keeps beside them; the tensors are
        the copy's own (nothing changes a copy while it is held)."""
        tensors = {PREFIX + _VALUES: self.values, PREFIX + _BUFFERS: self.buffers}
        tensors.update({PREFIX + _OPT + k: v for k, v in self.opt_tensors.items()})
        return tensors, {"optimizer": self.opt_scalars}

    @classmethod
    def from_state(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None
    ) -> TrialCopy | None:
        """The copy a checkpoint held (None: it held none)."""
        if meta is None:
            return None
        opt = {
            k[len(PREFIX + _OPT) :]: v.clone()
            for k, v in tensors.items()
            if k.startswith(PREFIX + _OPT)
        }
        return cls(
            tensors[PREFIX + _VALUES].clone(),
            tensors[PREFIX + _BUFFERS].clone(),
            opt,
            dict(meta["optimizer"]),
        )


def copy_bytes(values: int, optimizer: OptimizerSpec) -> int:
    """What a copy of ``values`` float32 parameters and their optimizer's state takes (the
    model's buffers, a few running statistics, aside)."""
    return 4 * values * (1 + optimizer.state_slots)
