"""bench/scale_shards.py's table job, shipped to the workers as this file."""

from __future__ import annotations

import torch
from torch import nn


class TableBag(nn.Module):
    """One EmbeddingBag (mean) of ``rows`` x 16 on the shards, and a linear head."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(rows, 16, mode="mean", sparse=True)
        self.head = nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.bag(ids))
        return out
