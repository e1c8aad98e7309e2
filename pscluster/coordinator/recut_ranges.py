"""The offset arithmetic of a re-cut (:mod:`pscluster.coordinator.recut`): where each old
shard's part of a vector lands among the new ranges.

A job's flat vectors (the float32 parameters, the float64 buffers) are cut into contiguous
ranges in plan order, so every per-element tensor a shard holds is found by its global offset
alone; one function cuts them all, so values, optimizer moments, the held-zeros mask and a
sync step's sum can never be cut differently from one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from pscluster.model.partition import Range


@dataclass(frozen=True)
class Piece:
    """An old shard's part of one vector: ``tensor`` holds ``length`` values from global
    offset ``start``; None where that shard holds nothing of it (filled on cutting)."""

    start: int
    length: int
    tensor: torch.Tensor | None


def check_contiguous(ranges: Sequence[Range], what: str) -> Range:
    """The range ``ranges`` cover together; ValueError unless each starts where the one
    before it ends (plan order), so that a global offset names one value."""
    if not ranges:
        raise ValueError(f"no {what} ranges to cut")
    for before, after in pairwise(ranges):
        if after.start != before.end:
            raise ValueError(
                f"the {what} ranges are not contiguous in plan order: one ends at "
                f"{before.end}, the next starts at {after.start}"
            )
    return Range(ranges[0].start, ranges[-1].end - ranges[0].start)


def cut(
    pieces: Sequence[Piece], start: int, length: int, dtype: torch.dtype, fill: float = 0.0
) -> torch.Tensor:
    """Global ``[start, start + length)`` of the vector ``pieces`` hold, as a new tensor;
    a piece without a tensor gives ``fill``. The pieces must cover the range."""
    parts: list[torch.Tensor] = []
    end, at = start + length, start
    for piece in pieces:
        low, high = max(at, piece.start), min(end, piece.start + piece.length)
        if low >= high:
            continue
        if low != at:
            raise ValueError(f"nothing holds offsets [{at}, {low}) of the vector being cut")
        if piece.tensor is None:
            parts.append(torch.full((high - low,), fill, dtype=dtype))
        else:
            parts.append(piece.tensor[low - piece.start : high - piece.start].to(dtype))
        at = high
    if at != end:
        raise ValueError(f"nothing holds offsets [{at}, {end}) of the vector being cut")
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def homes(old: Sequence[Range], new: Sequence[Range]) -> list[int]:
    """For each old range, the new range that takes over its counters: the one holding its
    first value (an empty range, e.g. of a job of tables only: the new range of the same
    index, or the last). Each old shard's counters go whole to one new shard, so the job's
    sums over its shards neither double nor lose anything."""
    out = []
    for index, part in enumerate(old):
        holding = [j for j, r in enumerate(new) if r.start <= part.start < r.end]
        out.append(holding[0] if part.length and holding else min(index, len(new) - 1))
    return out
