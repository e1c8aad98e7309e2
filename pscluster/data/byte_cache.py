"""A least-recently-used cache bounded by the bytes of what it holds.

Two readers keep what they fetched or decoded for the next read: a parquet source its
decoded row groups (``data/sources/parquet.py``) and a worker the partitions of uploaded
arrays it leased (``worker/uploaded.py``). Both know each value's size when they make it,
and both keep nothing larger than the whole budget (the caller holds that one while it
reads it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Values by key, the least recently used dropped first once ``limit`` bytes are held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0  # what the values held take

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None if it is not held."""
        held = self._values.get(key)
        if held is None:
            return None
        self._values.move_to_end(key)
        return held[0]

    def put(self, key: K, value: V, nbytes: int) -> None:
        """Hold ``value`` (``nbytes`` big) unless it alone exceeds the limit, dropping the
        least recently used until it fits."""
        old = self._values.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if nbytes > self.limit:
            return
        while self._values and self.bytes + nbytes > self.limit:
            _, (_, dropped) = self._values.popitem(last=False)
            self.bytes -= dropped
        self._values[key] = (value, nbytes)
        self.bytes += nbytes
