"""How a job's flat vector splits over shards: the ``Partitioner`` policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
