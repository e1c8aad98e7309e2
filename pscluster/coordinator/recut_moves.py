"""Which pieces of a job's per-value tensors move between which shards in a move
(:mod:`pscluster.coordinator.moves`), and which stay where they are.

The values and the optimizer's per-element moments are nearly all of a dense job's state,
and both layouts cut them into balanced contiguous ranges in plan order, so a shard in both
layouts keeps most of its range: only the difference needs to travel. Each new range is cut
at the old ranges' bounds into pieces, each held by one old shard; a piece whose old shard
is the new shard itself (by address) stays local, the rest is sent from that old shard.
Pure: no RPCs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pscluster.coordinator.recut_ranges import check_contiguous
from pscluster.model.partition import Range


@dataclass(frozen=True)
class Piece:
    """Global ``[start, start + length)`` of a new shard's range, held by old shard
    ``source`` (plan order); ``local`` when that is the new shard itself."""

    start: int
    length: int
    source: int
    local: bool


def pieces(
    old: Sequence[Range],
    new: Sequence[Range],
    old_addresses: Sequence[str],
    new_addresses: Sequence[str],
) -> list[list[Piece]]:
    """Per new range, its pieces in order; together they cover it exactly once. ValueError
    unless the old and the new ranges each are contiguous in plan order and cover the same
    offsets, and the addresses are one per range."""
    if len(old) != len(old_addresses) or len(new) != len(new_addresses):
        raise ValueError(
            f"{len(old)} old ranges for {len(old_addresses)} addresses, {len(new)} new ones "
            f"for {len(new_addresses)}"
        )
    if check_contiguous(old, "old parameter") != check_contiguous(new, "new parameter"):
        raise ValueError(f"the old ranges cover {old}, the new ones {new}")
    out = []
    for target, address in zip(new, new_addresses, strict=True):
        mine = []
        for index, (held, source) in enumerate(zip(old, old_addresses, strict=True)):
            low, high = max(target.start, held.start), min(target.end, held.end)
            if low < high:
                mine.append(Piece(low, high - low, index, source == address))
        out.append(mine)
    return out


def sent_values(plan: Sequence[Sequence[Piece]]) -> int:
    """How many values of each per-value tensor travel (the pieces not local)."""
    return sum(p.length for shard in plan for p in shard if not p.local)
