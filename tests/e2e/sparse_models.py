"""Models with embedding tables on the shards (``sparse=True``), as people write them. Each
ships to the workers as this file's source."""

from __future__ import annotations

import torch
from torch import nn


class TinyCTR(nn.Module):
    """A bag of item ids (summed), a user id (with a padding row) and dense features."""

    def __init__(self, items: int = 997, users: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.items = nn.EmbeddingBag(items, dim, mode="sum", sparse=True)
        self.users = nn.Embedding(users, 4, sparse=True, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim + 4 + 3, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, items: torch.Tensor, user: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.items(items), self.users(user), dense], dim=1)
        out: torch.Tensor = self.mlp(h).squeeze(1)
        return out


class MeanBag(nn.Module):
    """One EmbeddingBag (mean) over variable-length bags given by offsets in the batch... as
    a fixed-width 2-D input here, and a linear head: the table is most of the model."""

    def __init__(self, rows: int = 5000, dim: int = 16) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(rows, dim, mode="mean", sparse=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.bag(ids))
        return out
