"""The optimizer of a job's embedding rows: its validated configuration, shared by the SDK,
the coordinator and the shards (which run it: :mod:`pscluster.server.tables.optimizers`).

Rows are updated only where a batch touched them, as ``torch.optim.SparseAdam`` and
``torch.optim.Adagrad`` do with sparse gradients, so the dense optimizers (whose weight decay
and momentum would move every row every step) do not apply to tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pscluster.errors import InvalidArgument
from pscluster.v1 import common_pb2

SPARSE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "lazy_adam")
_EPS = {"adagrad": 1e-10, "rowwise_adagrad": 1e-10, "lazy_adam": 1e-8, "sgd": 0.0}


@dataclass(frozen=True)
class SparseOptimizerSpec:
    """A validated sparse optimizer, with the proto's "0 means default" resolved."""

    name: str
    lr: float
    eps: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    initial_accumulator: float = 0.0

    def to_proto(self) -> common_pb2.SparseOptimizerConfig:
        return common_pb2.SparseOptimizerConfig(
            name=self.name,
            lr=self.lr,
            eps=self.eps,
            beta1=self.betas[0],
            beta2=self.betas[1],
            initial_accumulator=self.initial_accumulator,
        )


def parse_sparse_optimizer(config: common_pb2.SparseOptimizerConfig) -> SparseOptimizerSpec:
    """Validate ``config``; InvalidArgument names the field and what it accepts."""
    name = config.name.strip().lower()
    if name not in SPARSE_OPTIMIZERS:
        raise InvalidArgument(
            f"sparse_optimizer.name {config.name!r} is not supported; expected one of "
            f"{list(SPARSE_OPTIMIZERS)}"
        )
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise InvalidArgument(f"sparse_optimizer.lr must be > 0, got {config.lr}")
    if not (config.eps >= 0 and math.isfinite(config.eps)):
        raise InvalidArgument(f"sparse_optimizer.eps must be >= 0, got {config.eps}")
    betas = (config.beta1 or 0.9, config.beta2 or 0.999)
    if not all(0 <= b < 1 for b in betas):
        raise InvalidArgument(f"sparse_optimizer betas must be in [0, 1), got {betas}")
    if not (config.initial_accumulator >= 0 and math.isfinite(config.initial_accumulator)):
        raise InvalidArgument(
            f"sparse_optimizer.initial_accumulator must be >= 0, got {config.initial_accumulator}"
        )
    return SparseOptimizerSpec(
        name=name,
        lr=config.lr,
        eps=config.eps or _EPS[name],
        betas=betas,
        initial_accumulator=config.initial_accumulator,
    )


def sparse_optimizer_config(given: object) -> common_pb2.SparseOptimizerConfig:
    """The SDK's ``sparse_optimizer={"name": "adagrad", "lr": 0.05}`` as a proto (validated)."""
    if not isinstance(given, dict):
        raise InvalidArgument(
            f"sparse_optimizer must be a dict such as {{'name': 'adagrad', 'lr': 0.05}}, "
            f"got {type(given).__name__}"
        )
    fields = {"name", "lr", "eps", "beta1", "beta2", "initial_accumulator"}
    given = dict(given)
    if "betas" in given:
        given["beta1"], given["beta2"] = given.pop("betas")
    unknown = sorted(set(given) - fields)
    if unknown:
        raise InvalidArgument(
            f"sparse_optimizer has unknown fields {unknown}; it takes {sorted(fields)}"
        )
    try:
        config = common_pb2.SparseOptimizerConfig(**given)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"sparse_optimizer: {e}") from e
    parse_sparse_optimizer(config)
    return config
