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

Mode "auto" changes k while the job runs (its pulls say the number in force, and the worker
follows it from its next window: :meth:`LocalSGD.follow`). Each push says which it carries
(``Window.local_steps``), so the shards add a change and step their optimizer on a gradient
whatever the number is when it arrives; their optimizer's state waits, untouched, while the
workers' own copies take the steps.

Either way the window also yields the change of the model's buffers (BatchNorm statistics),
which goes with the push: the shards merge it (see :mod:`pscluster.model.buffers`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from pscluster.data import inputs
from pscluster.data.inputs import Inputs
from pscluster.model.buffers import BufferLayout
from pscluster.model.hosted import take_row_grads
from pscluster.model.layout import ParamLayout
from pscluster.model.optimizer import parse_optimizer, torch_optimizer
from pscluster.v1 import common_pb2
from pscluster.worker.objectives import BatchObjective
from pscluster.worker.overlap import GradientStream
from pscluster.worker.phases import PhaseClock
from pscluster.worker.precision import Precision

Batch = tuple[Inputs, torch.Tensor]


class PushStarter(Protocol):
    """Starts a batch's push before its backward (pscluster.worker.overlap): given the
    buffers' change (known after forward), the loss scale and the batch's samples."""

    def __call__(
        self, buffer_delta: torch.Tensor | None, grad_scale: float, samples: int
    ) -> StartedPush: ...


class StartedPush(Protocol):
    def cancel(self) -> None: ...


@dataclass
class Window:
    """What one window produced."""

    # What to push (on the CPU): the gradient (k = 1) or the parameter change / lr (k > 1);
    # None when no batch of the window was finite.
    update: torch.Tensor | None
    # (loss, samples) of each batch that went into ``update``, in order.
    steps: list[tuple[float, int]] = field(default_factory=list)
    nonfinite: int = 0  # batches skipped for a non-finite loss or gradient
    overflows: int = 0  # fp16 batches skipped because the scaled gradient overflowed
    # The buffers' change over the window (float64, CPU); None when the model has none.
    buffer_delta: torch.Tensor | None = None
    grad_scale: float = 1.0  # ``update`` is the gradient times this (fp16 loss scaling)
    # Per hosted table, (unique ids, gradient rows) of the batch in ``update`` (times
    # ``grad_scale``, as the update is); empty when the model has no tables.
    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # The push already on its way, started from backward (None: push ``update`` after).
    started: StartedPush | None = None
    # 0: ``update`` is a gradient; n > 0: the change n steps of the worker's optimizer made.
    local_steps: int = 0

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.steps)


class LocalSGD:
    def __init__(
        self,
        model: nn.Module,
        layouts: tuple[ParamLayout, BufferLayout],
        objective: BatchObjective,
        optimizer: common_pb2.OptimizerConfig,
        local_steps: int,
        precision: Precision,
        clock: PhaseClock | None = None,
        stream: GradientStream | None = None,
    ) -> None:
        self.model = model
        self.clock = clock or PhaseClock()  # forward and backward are timed here
        # One step per push only (run() takes it for no window of local steps): the gradient
        # goes out bucket by bucket during backward.
        self.stream = stream
        self.layout, self.buffers = layouts
        self.objective = objective  # the job's loss, or distillation's: see worker/objectives
        self.precision = precision
        self.local_steps = 1
        self.lr = optimizer.lr
        self._optimizer = optimizer
        self._opt: torch.optim.Optimizer | None = None
        self._before: dict[str, Any] | None = None  # optimizer state as the window began
        self.follow(local_steps)

    def follow(self, local_steps: int) -> None:
        """Take ``local_steps`` steps per window from the next window on (0 or 1: one step
        per push). The worker's optimizer starts afresh when local steps begin and goes when
        they end: between those the shards' optimizer, with the job's state, takes the steps."""
        k = max(1, local_steps)
        if k == self.local_steps:
            return
        self.local_steps = k
        if k == 1:
            self._opt = self._before = None
        elif self._opt is None:
            trainable = [p for _, p in self.model.named_parameters() if p.requires_grad]
            self._opt = torch_optimizer(trainable, parse_optimizer(self._optimizer))

    def run(
        self,
        values: torch.Tensor,
        buffers: torch.Tensor,
        batches: Sequence[Batch],
        start: PushStarter | None = None,
        gate: AbstractContextManager[object] | None = None,
    ) -> Window:
        """Start from the pulled ``values`` and ``buffers`` and train on ``batches`` in order;
        with ``start`` (and a gradient stream) the push starts before backward, and with
        ``gate`` forward runs while the values are still arriving (pscluster.worker.pull_ahead)."""
        self.layout.load_into(self.model, values)
        self.buffers.load_into(self.model, buffers)
        self.model.train()
        if self._opt is None and self.stream is not None and start is not None:
            window = self._streamed_step(batches, buffers, start, self.stream, gate)
        elif self._opt is None:
            window = self._one_step(batches)
        else:
            self._before = copy.deepcopy(self._opt.state_dict())
            window = self._local_steps(values, batches)
        if self.buffers.size and window.update is not None and window.started is None:
            # (a streamed step measured it after forward, for the push it started)
            window.buffer_delta = buffer_change(self.buffers.read(self.model), buffers)
        return window

    def discard(self) -> None:
        """The last window's push was not applied (refused as stale, or late for its sync
        step): put the optimizer state back as it was before the window, as a shard's
        optimizer never saw the update either."""
        if self._opt is not None and self._before is not None:
            self._opt.load_state_dict(self._before)
            self._before = None

    def _backward(self, x: Inputs, y: torch.Tensor) -> float | None:
        """Gradients of one batch into the model (scaled for fp16); the batch's loss, or None
        if the loss is not finite."""
        self.model.zero_grad(set_to_none=True)
        with self.clock.phase("forward"), self.precision.autocast():
            loss = self.objective(self.model, x, y)
        with self.clock.phase("backward"):
            self.precision.backward(loss)
        value = float(loss.detach())
        return value if math.isfinite(value) else None

    def _one_step(self, batches: Sequence[Batch]) -> Window:
        window = Window(update=None)
        for x, y in batches:  # one batch, by construction
            scale = self.precision.scale
            value = self._backward(x, y)
            grad = self.layout.gradient(self.model)
            rows = take_row_grads(self.model)  # taken every batch: none may carry over
            finite = all_finite(grad) and all(all_finite(g) for _, g in rows.values())
            self.precision.update(finite)
            if not finite and value is not None and scale != 1.0:
                window.overflows += 1  # the scale was too large: fp16's normal course
                continue
            if value is None or not finite:
                window.nonfinite += 1
                continue
            window.update = grad.to("cpu")
            window.grad_scale = scale
            window.rows = rows
            window.steps.append((value, inputs.rows(x, "batch")))
        return window

    def _streamed_step(
        self,
        batches: Sequence[Batch],
        pulled: torch.Tensor,
        start: PushStarter,
        stream: GradientStream,
        gate: AbstractContextManager[object] | None,
    ) -> Window:
        """One step whose push leaves during backward; abandoned (nothing applied) if the
        loss or the gradient is not finite, or backward fails."""
        window = Window(update=None)
        (x, y), scale = batches[0], self.precision.scale
        self.model.zero_grad(set_to_none=True)
        with self.clock.phase("forward"), gate or nullcontext(), self.precision.autocast():
            loss = self.objective(self.model, x, y)
        value = float(loss.detach())
        if not math.isfinite(value):  # as _one_step counts it (its backward is not finite)
            self.precision.update(False)
            window.nonfinite += 1
            return window
        delta = buffer_change(self.buffers.read(self.model), pulled) if self.buffers.size else None
        stream.arm()
        started = start(delta, scale, inputs.rows(x, "batch"))
        try:
            with self.clock.phase("backward"):
                self.precision.backward(loss)
                grad = stream.finish()
        except BaseException:
            stream.abort()
            started.cancel()
            raise
        finite = all_finite(grad)
        self.precision.update(finite)
        if not finite:
            stream.abort()
            started.cancel()
            if scale != 1.0:
                window.overflows += 1
            else:
                window.nonfinite += 1
            return window
        stream.seal()
        window.update, window.grad_scale, window.started = grad, scale, started
        window.buffer_delta = delta
        window.steps.append((value, inputs.rows(x, "batch")))
        return window

    def _local_steps(self, start: torch.Tensor, batches: Sequence[Batch]) -> Window:
        assert self._opt is not None
        if _holds_parameters(start, self.model):
            # Pulled straight into the model (ParamLayout.bind, one step per push until auto
            # chose local steps): the steps would move the start with them.
            start = start.clone()
        window = Window(update=None)
        for x, y in batches:
            scale = self.precision.scale
            value = self._backward(x, y)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if scale != 1.0:
                for g in grads:
                    g.div_(scale)
            finite = all(all_finite(g) for g in grads)
            self.precision.update(finite)
            if not finite and value is not None and scale != 1.0:
                window.overflows += 1
                continue
            if value is None or not finite:
                window.nonfinite += 1
                continue
            self._opt.step()
            window.steps.append((value, inputs.rows(x, "batch")))
        if window.steps:
            now = self.layout.flatten(dict(self.model.named_parameters()))
            # (start - now) / lr: the shards' SGD step at lr turns it back into the change.
            update = start.sub(now).div_(self.lr)
            if all_finite(update):
                window.update, window.local_steps = update, len(window.steps)
            else:  # the local steps diverged: nothing of this window is worth pushing
                window.nonfinite += len(window.steps)
                window.steps = []
        return window


def _holds_parameters(values: torch.Tensor, model: nn.Module) -> bool:
    """Whether the model's parameters live in ``values``' memory."""
    ptr = values.untyped_storage().data_ptr()
    return any(p.untyped_storage().data_ptr() == ptr for p in model.parameters())


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite: one reduction in the usual case instead of a mask over
    every value (a NaN or inf makes the sum non-finite); the exact check runs only when the
    sum overflows, so that huge but finite gradients still go to the shards, which take them."""
    return math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all())


def buffer_change(now: torch.Tensor, pulled: torch.Tensor) -> torch.Tensor | None:
    """What the window changed in the buffers: 0 where a value stayed (an infinite mask minus
    itself is 0, not NaN); None when a buffer turned non-finite (a diverged batch), so that
    nothing of it reaches the shards."""
    delta = torch.where(now == pulled, torch.zeros_like(now), now - pulled)
    return delta if all_finite(delta) else None
