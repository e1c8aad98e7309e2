"""Which rows of a dynamic table go: the pure decisions, over a table's per-slot arrays.

A row's age is the number of ticks since its last update, one byte (saturating at 255): a
tick every `period` applies ages every row by one pass over a byte a slot, far cheaper than
a 4-byte clock per row (and a byte a row matters: see `dynamic`). Rows untouched for longer
than `evict_after` applies go at a tick; beyond a capacity, the least often updated rows go,
the oldest first among equals.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
AGE_MAX = 255  # limits below stay under ~33 ticks, so saturation never hides an expiry
TICKS_PER_LIMIT = 16  # so a row outlives its limit by at most ~2 ticks, 1/8 of it
RECENCY_PERIOD = 16  # applies per tick of a table with a capacity and no evict_after


def period(evict_after: int) -> int:
    """Applies per tick."""
    return max(1, evict_after // TICKS_PER_LIMIT) if evict_after > 0 else RECENCY_PERIOD


def age_limit(evict_after: int) -> int:
    """The age at which a row has gone more than `evict_after` applies untouched for sure:
    a row updated between two ticks is k ticks old after at least (k - 1) * period + 1
    applies."""
    return -(-evict_after // period(evict_after)) + 1


def tick(age: npt.NDArray[np.uint8]) -> None:
    """Every row one tick older, saturating."""
    np.minimum(age, AGE_MAX - 1, out=age)
    age += 1


def expired(slot_ids: I64, age: npt.NDArray[np.uint8], evict_after: int) -> I64:
    """The live slots (id >= 0) at or past the age limit."""
    live = slot_ids >= 0
    return np.flatnonzero(live & (age[: live.size] >= age_limit(evict_after)))


def least_used(
    slot_ids: I64, count: npt.NDArray[np.int32], age: npt.NDArray[np.uint8], excess: int
) -> I64:
    """The `excess` live slots first in (update count, -age, slot) order, by two partitions
    rather than a sort of every row."""
    live = np.flatnonzero(slot_ids >= 0)
    counts = count[live]
    kth = np.partition(counts, excess - 1)[excess - 1]
    below, tie = live[counts < kth], live[counts == kth]
    need = excess - below.size
    youth = AGE_MAX - age[tie].astype(np.int16)  # smaller is older
    cut = np.partition(youth, need - 1)[need - 1]
    older, same = tie[youth < cut], tie[youth == cut]
    return np.concatenate([below, older, same[: need - older.size]])
