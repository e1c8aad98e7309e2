"""Row-wise update rules for embedding tables: each steps only the rows a push touched.

``values`` is a table's float32 rows on this shard, ``slots`` the unique local rows to update
and ``grads`` their gradients (one row each). The rules are torch's for sparse gradients
(``torch.optim.SGD``, ``Adagrad`` and ``SparseAdam``), written with index ops over the
touched rows only: a step costs the batch's unique rows, never the table.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import torch

from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.lazy import lazy_zeros


class RowOptimizer(Protocol):
    """One table's update rule and its state (tensors whose first dimension is the rows)."""

    def state(self) -> dict[str, torch.Tensor]: ...

    def scalars(self) -> dict[str, float]: ...

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None: ...

    def step(self, values: torch.Tensor, slots: torch.Tensor, grads: torch.Tensor) -> None: ...

    def load_scalars(self, scalars: dict[str, float]) -> None:
        """Take the scalars of :meth:`scalars` alone (an incremental checkpoint's)."""
        ...


def _state(shape: tuple[int, ...], fill: float, lazy: bool) -> torch.Tensor:
    """A rule's state tensor: filled with its initial value, or (``lazy``, for a dynamic
    table, which writes a row's state when the row is made) zeros taken page by page."""
    if lazy:
        return torch.from_numpy(lazy_zeros(shape, "float32"))
    return torch.full(shape, fill, dtype=torch.float32)


class _Rule:
    """What every rule keeps alike: its state tensors, named in ``STATE`` (they are the rule's
    own: a delta checkpoint writes rows into them), and no scalars unless it says so."""

    STATE: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: SparseOptimizerSpec, rows: int, dim: int, lazy: bool) -> None:
        self.lr, self.eps = spec.lr, spec.eps

    def state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.STATE}

    def scalars(self) -> dict[str, float]:
        return {}

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
        for name in self.STATE:
            getattr(self, name).copy_(tensors[name])
        self.load_scalars(scalars)

    def load_scalars(self, scalars: dict[str, float]) -> None:
        return None


class RowSGD(_Rule):
    def step(self, values: torch.Tensor, slots: torch.Tensor, grads: torch.Tensor) -> None:
        values.index_add_(0, slots, grads, alpha=-self.lr)


class RowAdagrad(_Rule):
    """torch.optim.Adagrad on a sparse gradient: a per-value sum of squares (``dim`` floats of
    state per row)."""

    STATE = ("sum",)

    def __init__(self, spec: SparseOptimizerSpec, rows: int, dim: int, lazy: bool) -> None:
        super().__init__(spec, rows, dim, lazy)
        self.sum = _state((rows, dim), spec.initial_accumulator, lazy)

    def step(self, values: torch.Tensor, slots: torch.Tensor, grads: torch.Tensor) -> None:
        acc = self.sum.index_select(0, slots).addcmul_(grads, grads)
        self.sum.index_copy_(0, slots, acc)
        values.index_add_(0, slots, grads / acc.sqrt_().add_(self.eps), alpha=-self.lr)


class RowwiseAdagrad(_Rule):
    """One accumulator per row, the mean of its squared gradient (TorchRec's
    EXACT_ROWWISE_ADAGRAD): 4 bytes of state per row whatever the width."""

    STATE = ("sum",)

    def __init__(self, spec: SparseOptimizerSpec, rows: int, dim: int, lazy: bool) -> None:
        super().__init__(spec, rows, dim, lazy)
        self.sum = _state((rows,), spec.initial_accumulator, lazy)

    def step(self, values: torch.Tensor, slots: torch.Tensor, grads: torch.Tensor) -> None:
        acc = self.sum.index_select(0, slots).add_(grads.square().mean(dim=1))
        self.sum.index_copy_(0, slots, acc)
        scale = acc.sqrt_().add_(self.eps).reciprocal_().unsqueeze(1)
        values.index_add_(0, slots, grads * scale, alpha=-self.lr)


class LazyAdam(_Rule):
    """torch.optim.SparseAdam: the moments of touched rows only, and one step count for the
    table (bias correction as SparseAdam makes it)."""

    STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, spec: SparseOptimizerSpec, rows: int, dim: int, lazy: bool) -> None:
        super().__init__(spec, rows, dim, lazy)
        self.beta1, self.beta2 = spec.betas
        self.exp_avg = _state((rows, dim), 0.0, lazy)
        self.exp_avg_sq = _state((rows, dim), 0.0, lazy)
        self.steps = 0

    def scalars(self) -> dict[str, float]:
        return {"steps": float(self.steps)}

    def load_scalars(self, scalars: dict[str, float]) -> None:
        self.steps = int(scalars["steps"])

    def step(self, values: torch.Tensor, slots: torch.Tensor, grads: torch.Tensor) -> None:
        self.steps += 1
        m = self.exp_avg.index_select(0, slots).lerp_(grads, 1 - self.beta1)
        v = self.exp_avg_sq.index_select(0, slots)
        v.mul_(self.beta2).addcmul_(grads, grads, value=1 - self.beta2)
        self.exp_avg.index_copy_(0, slots, m)
        self.exp_avg_sq.index_copy_(0, slots, v)
        bias1 = 1 - self.beta1**self.steps
        bias2 = 1 - self.beta2**self.steps
        step_size = self.lr * math.sqrt(bias2) / bias1
        values.index_add_(0, slots, m / v.sqrt_().add_(self.eps), alpha=-step_size)


_RULES: dict[str, type[RowSGD | RowAdagrad | RowwiseAdagrad | LazyAdam]] = {
    "sgd": RowSGD,
    "adagrad": RowAdagrad,
    "rowwise_adagrad": RowwiseAdagrad,
    "lazy_adam": LazyAdam,
}


def make_row_optimizer(
    spec: SparseOptimizerSpec, rows: int, dim: int, *, lazy: bool = False
) -> RowOptimizer:
    """The rule `spec` names, with state for `rows` rows of width `dim` (see `_state`)."""
    return _RULES[spec.name](spec, rows, dim, lazy)
