"""A job's optimizer: ``torch.optim`` itself, on a shard's flat slice or on a worker's model.

Shards step one flat parameter (``FlatOptimizer``); with local SGD, workers step their copy
of the model with the same builder (``torch_optimizer``), which is why this lives with the
model code that every role shares rather than in ``server/``.

Reusing torch.optim (rather than re-implementing the update rules) is what makes a shard's
update bit-identical to single-process PyTorch: an update is elementwise, so stepping one flat
vector gives exactly the values that stepping the model's tensors one by one would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pscluster.errors import InvalidArgument
from pscluster.v1 import common_pb2

OPTIMIZERS = ("sgd", "adam", "adamw")
_DEFAULT_BETA1 = 0.9
_DEFAULT_BETA2 = 0.999
_DEFAULT_EPS = 1e-8


@dataclass(frozen=True)
class OptimizerSpec:
    """A validated optimizer configuration, with the proto's "0 means default" resolved."""

    name: str
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (_DEFAULT_BETA1, _DEFAULT_BETA2)
    eps: float = _DEFAULT_EPS

    @property
    def state_slots(self) -> int:
        """Tensors of the parameters' size the optimizer keeps: Adam's two moments, SGD's
        momentum buffer when it has momentum."""
        return 2 if self.name in ("adam", "adamw") else int(self.momentum > 0)


def parse_optimizer(config: common_pb2.OptimizerConfig) -> OptimizerSpec:
    """Validate ``config``; InvalidArgument names the field and the accepted values."""
    name = config.name.strip().lower()
    if name not in OPTIMIZERS:
        raise InvalidArgument(
            f"optimizer.name {config.name!r} is not supported; expected one of {list(OPTIMIZERS)}"
        )
    _check(config.lr > 0 and math.isfinite(config.lr), f"optimizer.lr must be > 0, got {config.lr}")
    _check(
        config.weight_decay >= 0 and math.isfinite(config.weight_decay),
        f"optimizer.weight_decay must be >= 0, got {config.weight_decay}",
    )
    if name == "sgd":
        return _parse_sgd(config)
    # A field of the other family set by mistake would be silently ignored by torch: say so.
    _check(
        config.momentum == 0 and config.dampening == 0 and not config.nesterov,
        f"optimizer {name!r} takes no momentum, dampening or nesterov (those are sgd's); "
        "use beta1/beta2",
    )
    beta1 = config.beta1 or _DEFAULT_BETA1
    beta2 = config.beta2 or _DEFAULT_BETA2
    for field, beta in (("beta1", beta1), ("beta2", beta2)):
        _check(0 <= beta < 1, f"optimizer.{field} must be in [0, 1), got {beta}")
    _check(
        config.eps >= 0 and math.isfinite(config.eps),
        f"optimizer.eps must be >= 0 (0 means the default {_DEFAULT_EPS}), got {config.eps}",
    )
    return OptimizerSpec(
        name=name,
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(beta1, beta2),
        eps=config.eps or _DEFAULT_EPS,
    )


def _parse_sgd(config: common_pb2.OptimizerConfig) -> OptimizerSpec:
    _check(
        config.momentum >= 0 and math.isfinite(config.momentum),
        f"optimizer.momentum must be >= 0, got {config.momentum}",
    )
    _check(
        config.dampening >= 0 and math.isfinite(config.dampening),
        f"optimizer.dampening must be >= 0, got {config.dampening}",
    )
    _check(
        not config.nesterov or (config.momentum > 0 and config.dampening == 0),
        "optimizer.nesterov needs momentum > 0 and dampening == 0, got "
        f"momentum={config.momentum}, dampening={config.dampening}",
    )
    _check(
        config.beta1 == 0 and config.beta2 == 0 and config.eps == 0,
        "optimizer 'sgd' takes no beta1, beta2 or eps (those are adam's)",
    )
    return OptimizerSpec(
        name="sgd",
        lr=config.lr,
        momentum=config.momentum,
        dampening=config.dampening,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgument(message)


class FlatOptimizer:
    """One flat float32 parameter vector and the torch.optim optimizer that updates it.

    The vector is updated in place; readers must copy it under the job's lock.
    """

    def __init__(self, values: torch.Tensor, spec: OptimizerSpec) -> None:
        if values.dtype != torch.float32 or values.dim() != 1:
            raise InvalidArgument(
                f"parameters must be a 1-D float32 vector, got {values.dtype} {tuple(values.shape)}"
            )
        self.spec = spec
        # nn.Parameter shares the tensor's storage: no copy of a possibly huge vector.
        self.param = nn.Parameter(values, requires_grad=True)
        self._opt = torch_optimizer([self.param], spec)

    @property
    def values(self) -> torch.Tensor:
        return self.param.detach()

    def step(self, grad: torch.Tensor) -> None:
        """Apply one gradient exactly as ``p.grad = g; opt.step()`` would in PyTorch."""
        if grad.shape != self.param.shape or grad.dtype != torch.float32:
            raise InvalidArgument(
                f"gradient must be float32 of shape {tuple(self.param.shape)}, "
                f"got {grad.dtype} {tuple(grad.shape)}"
            )
        with torch.no_grad():
            self.param.grad = grad
            try:
                self._opt.step()
            finally:
                # Dropped so the shard does not keep the last gradient alive between pushes.
                self.param.grad = None

    def add_change(self, change: torch.Tensor) -> None:
        """Add a change some other copy of this optimizer made (local SGD steps on a worker,
        sent divided by lr): ``w -= lr * change``, the state untouched. With plain SGD this
        is exactly :meth:`step`."""
        if change.shape != self.param.shape or change.dtype != torch.float32:
            raise InvalidArgument(
                f"change must be float32 of shape {tuple(self.param.shape)}, "
                f"got {change.dtype} {tuple(change.shape)}"
            )
        with torch.no_grad():
            self.param.add_(change, alpha=-self.spec.lr)

    def state_tensors(
        self, *, copy: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, float | None]]:
        """The optimizer's per-parameter state (momentum, Adam moments, step count): tensors
        (copies; ``copy`` False lends its own, for a reader nothing can race) and plain
        numbers apart, so checkpoints need no pickle."""
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, float | None] = {}
        for key, value in self._opt.state.get(self.param, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().clone() if copy else value.detach()
            else:
                scalars[key] = value
        return tensors, scalars

    def reset_state(self) -> None:
        """Forget the per-parameter state, as before the first step (the next step creates it
        anew, exactly as torch.optim does on a fresh optimizer)."""
        self._opt.state.clear()

    def load_state_tensors(
        self, tensors: dict[str, torch.Tensor], scalars: dict[str, float | None]
    ) -> None:
        """Restore what :meth:`state_tensors` gave (the hyperparameters come from the spec)."""
        if not tensors and not scalars:
            return
        state = self._opt.state_dict()
        state["state"] = {0: {**scalars, **tensors}}
        self._opt.load_state_dict(state)


def torch_optimizer(params: list[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The torch.optim optimizer ``spec`` describes, over ``params`` (a shard's one flat
    vector, or a worker's model when it takes local SGD steps)."""
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            dampening=spec.dampening,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


def warm_up() -> None:
    """Build and step a throwaway optimizer once.

    The first torch.optim optimizer of a process imports torch's compiler stack (2-5 s on
    these machines); paying that before the shard reports SERVING keeps it out of the first
    job's InitJob deadline.
    """
    opt = FlatOptimizer(torch.zeros(1), OptimizerSpec(name="sgd", lr=0.1))
    opt.step(torch.zeros(1))
