"""How a job's parameters split over shards: the flat vector by ranges (``Partitioner``),
an embedding table's rows by id (``RowPartitioner``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pscluster.hashing import mix64


@dataclass(frozen=True)
class Range:
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


class Partitioner(Protocol):
    def split(self, size: int, shards: int) -> list[Range]:
        """Ranges, one per shard, in order, that together cover ``[0, size)``."""
        ...


class BalancedRanges:
    """Contiguous ranges whose lengths differ by at most one value.

    Contiguous ranges keep every push and pull one sequential copy per shard; balancing by
    value count (not by layer) keeps shards equally loaded whatever the layer sizes are.
    """

    def split(self, size: int, shards: int) -> list[Range]:
        if shards < 1:
            raise ValueError("need at least one shard")
        base, extra = divmod(size, shards)
        ranges, start = [], 0
        for i in range(shards):
            length = base + (1 if i < extra else 0)
            ranges.append(Range(start, length))
            start += length
        return ranges


class RowPartitioner(Protocol):
    """Which shard holds each row of an embedding table (the key-value counterpart of
    :class:`Partitioner`): a pure function of the id, so a worker, the coordinator and the
    shard itself agree without asking anyone."""

    def owner(self, ids: torch.Tensor, shards: int) -> torch.Tensor:
        """The shard index (0 .. shards - 1) of each int64 id."""
        ...


class ModuloRows:
    """``id % shards``: a fixed table's ids are 0 .. rows - 1, so any range of them (hot or
    cold) is spread evenly, and a shard finds a row at ``id // shards`` with no index."""

    def owner(self, ids: torch.Tensor, shards: int) -> torch.Tensor:
        return torch.remainder(ids, shards)


class HashRows:
    """``splitmix64(id) % shards``: a dynamic table's ids are anything (hashed features,
    multiples of some stride, timestamps), and modulo would put ids that share low bits on
    one shard."""

    def owner(self, ids: torch.Tensor, shards: int) -> torch.Tensor:
        mixed = mix64(ids.detach().cpu().numpy().astype(np.int64, copy=False))
        return torch.from_numpy((mixed % np.uint64(shards)).astype(np.int64))


def rows_partitioner(dynamic: bool) -> RowPartitioner:
    """A fixed table's rows go by modulo, a dynamic table's by hash."""
    return HashRows() if dynamic else ModuloRows()
