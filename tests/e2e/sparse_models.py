"""Models with embedding tables on the shards (``sparse=True``), as people write them. Each
ships to the workers as this file's source."""

from __future__ import annotations

import torch
from torch import nn

import pscluster


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


class SlotLogit(nn.Module):
    """Logistic regression on 26 categorical slots and 13 dense features: one weight per id,
    all slots in one table (per-slot offsets), so a batch is one lookup per shard."""

    def __init__(self, cardinalities: list[int]) -> None:
        super().__init__()
        offsets = torch.tensor([0, *cardinalities[:-1]]).cumsum(0)
        self.offsets: torch.Tensor
        self.register_buffer("offsets", offsets, persistent=False)
        self.ids = nn.Embedding(sum(cardinalities), 1, sparse=True)
        self.dense = nn.Linear(13, 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (
            self.dense(dense).squeeze(1) + self.ids(sparse + self.offsets).sum(1)[:, 0]
        )
        return out


class Recommender(nn.Module):
    """Bags of item ids from an open id space (hashed, any int64 >= 0), in a dynamic table."""

    def __init__(self) -> None:
        super().__init__()
        self.items = pscluster.DynamicEmbedding(8, mode="sum", admit_after=2, init_std=0.1)
        self.head = nn.Linear(8, 1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.items(items)).squeeze(1)
        return out


class MatrixFactorization(nn.Module):
    """Users and items, nothing else: a model of embedding tables alone."""

    def __init__(self, users: int = 100, items: int = 200, dim: int = 8) -> None:
        super().__init__()
        self.users = nn.Embedding(users, dim, sparse=True)
        self.items = nn.Embedding(items, dim, sparse=True)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (self.users(user) * self.items(item)).sum(1)
        return out
