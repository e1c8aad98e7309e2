"""A window of training between one pull and one push: one step, or local SGD.

With a job's ``local_steps`` = k > 1 a worker pulls once, takes k steps of the job's own
optimizer (momentum, Adam moments, weight decay: kept by the worker from window to window)
on its copy of the parameters, and pushes the change of the window divided by the learning
rate. The shards then run plain SGD at that learning rate (see
``pscluster.coordinator.spec.shard_optimizer``), so an async push adds the worker's change
and a sync step adds the average of the workers' changes: local SGD with periodic averaging
(Lin et al., "Don't Use Large Mini-Batches, Use Local SGD", 2020), Downpour SGD's
n_fetch = n_push = k (Dean et al., 2012). Per sample it is 1/k of the bytes and round trips
of a push per step; the price is that the workers see each other's progress only once per
window.

k = 1 is the ordinary step: one gradient on the pulled parameters, applied by the shards'
optimizer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pscluster.model.layout import ParamLayout
from pscluster.model.optimizer import parse_optimizer, torch_optimizer
from pscluster.v1 import common_pb2

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Window:
    """What one window produced."""

    # What to push (on the CPU): the gradient (k = 1) or the parameter change / lr (k > 1);
    # None when no batch of the window was finite.
    update: torch.Tensor | None
    # (loss, samples) of each batch that went into ``update``, in order.
    steps: list[tuple[float, int]] = field(default_factory=list)
    nonfinite: int = 0  # batches skipped for a non-finite loss or gradient

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.steps)


class LocalSGD:
    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        loss_fn: LossFn,
        optimizer: common_pb2.OptimizerConfig,
        local_steps: int,
    ) -> None:
        self.model = model
        self.layout = layout
        self.loss_fn = loss_fn
        self.local_steps = max(1, local_steps)
        self.lr = optimizer.lr
        self._opt: torch.optim.Optimizer | None = None
        self._before: dict[str, Any] | None = None  # optimizer state as the window began
        if self.local_steps > 1:
            params = [p for _, p in model.named_parameters()]
            self._opt = torch_optimizer(params, parse_optimizer(optimizer))

    def run(
        self, values: torch.Tensor, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> Window:
        """Start from the pulled ``values`` and train on ``batches`` in order."""
        self.layout.load_into(self.model, values)
        self.model.train()
        if self._opt is None:
            return self._one_step(batches)
        self._before = copy.deepcopy(self._opt.state_dict())
        return self._local_steps(values, batches)

    def discard(self) -> None:
        """The last window's push was not applied (refused as stale, or late for its sync
        step): put the optimizer state back as it was before the window, as a shard's
        optimizer never saw the update either."""
        if self._opt is not None and self._before is not None:
            self._opt.load_state_dict(self._before)
            self._before = None

    def _backward(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """Gradients of one batch into the model; its loss, or None if anything is not finite."""
        self.model.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        value = float(loss.detach())
        return value if math.isfinite(value) else None

    def _one_step(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Window:
        window = Window(update=None)
        for x, y in batches:  # one batch, by construction
            value = self._backward(x, y)
            grad = self.layout.gradient(self.model)
            if value is None or not all_finite(grad):
                window.nonfinite += 1
                continue
            window.update = grad.to("cpu")
            window.steps.append((value, len(y)))
        return window

    def _local_steps(
        self, start: torch.Tensor, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> Window:
        assert self._opt is not None
        window = Window(update=None)
        for x, y in batches:
            value = self._backward(x, y)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if value is None or not all(all_finite(g) for g in grads):
                window.nonfinite += 1
                continue
            self._opt.step()
            window.steps.append((value, len(y)))
        if window.steps:
            now = self.layout.flatten(dict(self.model.named_parameters()))
            # (start - now) / lr: the shards' SGD step at lr turns it back into the change.
            update = start.sub(now).div_(self.lr)
            if all_finite(update):
                window.update = update
            else:  # the local steps diverged: nothing of this window is worth pushing
                window.nonfinite += len(window.steps)
                window.steps = []
        return window


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite: one reduction in the usual case instead of a mask over
    every value (a NaN or inf makes the sum non-finite); the exact check runs only when the
    sum overflows, so that huge but finite gradients still go to the shards, which take them."""
    return math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all())
