"""One embedding table as a shard holds it: plain data decoded from ``TableConfig``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pscluster.errors import InvalidArgument
from pscluster.v1 import parameter_server_pb2 as ps_pb2

# Tables wider than this are a mistake (an id column passed as the width, say).
MAX_DIM = 4096


@dataclass(frozen=True)
class TableSpec:
    """The rows of ``name`` whose id % ``shards`` == ``shard_index`` (row-wise by modulo:
    every shard gets an equal share of any id range, hot or cold, which a split into id
    ranges would not give when hot ids cluster)."""

    name: str
    num_rows: int
    dim: int
    shards: int
    shard_index: int
    initial_given: bool = False
    init_seed: int = 0
    padding_idx: int | None = None
    # A dynamic table (any id >= 0; rows created when admitted): see TableConfig.
    dynamic: bool = False
    init_std: float = 1.0
    admit_after: int = 0
    evict_after: int = 0
    capacity: int = 0

    @property
    def local_rows(self) -> int:
        """How many of a fixed table's ids this shard owns (0 for a dynamic table)."""
        if self.dynamic:
            return 0
        return max(0, -(-(self.num_rows - self.shard_index) // self.shards))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableSpec:
        return cls(**data)


def table_spec(config: ps_pb2.TableConfig) -> TableSpec:
    """Decode and check one table's config (InvalidArgument says which field is wrong)."""
    what = f"table {config.name!r}"
    if not config.name:
        raise InvalidArgument("a table config has no name; name it after its state_dict entry")
    if (config.num_rows < 1 and not config.dynamic) or not 1 <= config.dim <= MAX_DIM:
        raise InvalidArgument(
            f"{what} has {config.num_rows} rows of width {config.dim}; it needs at least one "
            f"row and a width of 1 to {MAX_DIM}"
        )
    if config.shards < 1 or config.shard_index >= config.shards:
        raise InvalidArgument(
            f"{what}: shard_index {config.shard_index} is not one of {config.shards} shards"
        )
    if config.dynamic and (config.num_rows or config.has_padding or config.initial_given):
        raise InvalidArgument(f"{what} is dynamic: it takes no num_rows, padding or given rows")
    if config.dynamic and not (config.init_std >= 0 and math.isfinite(config.init_std)):
        raise InvalidArgument(f"{what}: init_std must be >= 0, got {config.init_std}")
    if config.has_padding and config.padding_idx >= config.num_rows:
        raise InvalidArgument(f"{what}: padding_idx {config.padding_idx} is not a row of it")
    return TableSpec(
        name=config.name,
        num_rows=config.num_rows,
        dim=config.dim,
        shards=config.shards,
        shard_index=config.shard_index,
        initial_given=config.initial_given,
        init_seed=config.init_seed,
        padding_idx=config.padding_idx if config.has_padding else None,
        dynamic=config.dynamic,
        init_std=config.init_std if config.dynamic else 1.0,
        admit_after=config.admit_after,
        evict_after=config.evict_after,
        capacity=config.capacity,
    )


def refuse_ids(
    spec: TableSpec, ids: torch.Tensor, bad: torch.Tensor, why: Callable[[int], str]
) -> None:
    """InvalidArgument naming the first id marked `bad` and `why` it is refused, if any is:
    a table checks a request's ids before it reads or changes anything."""
    if bool(bad.any()):
        first = int(ids[bad.nonzero()[0, 0]])
        raise InvalidArgument(
            f"table {spec.name!r}: id {first} is {why(first)}; {int(bad.sum())} of "
            f"{ids.numel()} ids are refused and nothing was read or changed"
        )
