"""The CTR model of bench/sparse.py, shipped to the workers as this file.

All 26 categorical slots index ONE embedding table: slot s's raw id i becomes row
``(offset[s] + i) % rows``, where the offsets are the running sum of the slots' cardinalities,
so the slots take consecutive ranges of the table and the modulo folds whatever is left over
into it (the table has exactly ``rows`` rows whatever the cardinalities add up to). One table
means one Lookup per shard per batch. Its 26 vectors and the 13 dense features go through a
small MLP to one logit (bce_with_logits).

With ``sparse=True`` pscluster hosts the table on the shards and torch gives it sparse
gradients; with ``sparse=False`` it is an ordinary dense parameter (pscluster pulls and pushes
it whole every step; DDP all-reduces its whole gradient). With ``dynamic=True`` the table is a
``pscluster.DynamicEmbedding`` of hashed feature ids (slot and raw id), whose rows the shards
create on first touch: no size given, nothing folded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pscluster import DynamicEmbedding


def slot_offsets(cardinalities: Sequence[int], rows: int) -> torch.Tensor:
    """Where each slot's ids start in the table: the running sum of the cardinalities before
    it, modulo ``rows``."""
    starts = [0]
    for c in cardinalities[:-1]:
        starts.append(starts[-1] + int(c))
    return torch.tensor(starts, dtype=torch.int64) % int(rows)


def table_ids(sparse: torch.Tensor, offsets: torch.Tensor, rows: int) -> torch.Tensor:
    """Table rows of raw per-slot ids (n, slots)."""
    return torch.remainder(sparse + offsets, rows)


def hashed_ids(sparse: torch.Tensor) -> torch.Tensor:
    """Feature ids as a dynamic table takes them: slot s's raw id i is (s << 40) | i, any
    int64, with no table size to fold them into."""
    slots = torch.arange(sparse.shape[1], dtype=torch.int64) << 40
    return sparse.long() | slots


class OneTableCTR(nn.Module):
    """26 slots -> one (rows, dim) table -> concat with 13 dense features -> MLP -> logit."""

    def __init__(
        self,
        rows: int,
        cardinalities: Sequence[int],
        dim: int = 16,
        dense: int = 13,
        hidden: int = 64,
        sparse: bool = True,
        dynamic: bool = False,
    ) -> None:
        super().__init__()
        if rows < 1 or not cardinalities:
            raise ValueError(f"rows must be >= 1 and cardinalities non-empty, got {rows}")
        self.rows, self.dynamic = int(rows), dynamic
        # A plain attribute, not a buffer: a constant of the model, nothing to train or ship.
        self.offsets = slot_offsets(cardinalities, self.rows)
        self.table: nn.Module = (
            DynamicEmbedding(dim, init_std=1.0)
            if dynamic
            else nn.Embedding(self.rows, dim, sparse=sparse)
        )
        self.mlp = nn.Sequential(
            nn.Linear(len(cardinalities) * dim + dense, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, *, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        ids = hashed_ids(sparse) if self.dynamic else table_ids(sparse, self.offsets, self.rows)
        vectors = self.table(ids).flatten(1)
        out: torch.Tensor = self.mlp(torch.cat([vectors, dense], dim=1)).squeeze(1)
        return out
