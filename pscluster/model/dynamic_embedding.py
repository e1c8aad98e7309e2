"""``pscluster.DynamicEmbedding``: an embedding table for ids that are not known ahead.

Hashed feature ids, user or item ids that keep arriving: any int64 id >= 0 is valid, and a
row exists only once its id is admitted. In a job the table lives on the shards (like a
``sparse=True`` embedding, see :mod:`pscluster.model.hosted`), which create rows on first
touch (after ``admit_after`` lookups), evict rows not updated for ``evict_after`` versions or
the least used beyond ``capacity``, and step rows with the job's ``sparse_optimizer``. A row
starts as N(0, ``init_std``) values drawn from (``seed``, id) alone.

Outside a job (a fetched model, evaluated by the user) the module holds the rows the job
ended with: ``ids`` and ``weight``; an id it does not hold reads its initial values, as an
id that was never admitted did in training.

Example::

    class Recommender(nn.Module):
        def __init__(self):
            super().__init__()
            self.items = pscluster.DynamicEmbedding(16, mode="sum", admit_after=2)
            self.head = nn.Linear(16, 1)

        def forward(self, item_ids):        # (batch, items) int64, any ids >= 0
            return self.head(self.items(item_ids)).squeeze(1)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pscluster.server.tables.initial import initial_rows

MODES = (None, "sum", "mean")


class DynamicEmbedding(nn.Module):
    """``mode`` None: one row per id (as nn.Embedding); "sum"/"mean": each row of a 2-D input
    is a bag pooled to one vector (as nn.EmbeddingBag)."""

    def __init__(
        self,
        dim: int,
        *,
        mode: str | None = None,
        init_std: float = 0.01,
        admit_after: int = 0,
        evict_after: int = 0,
        capacity: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 1 or mode not in MODES or init_std < 0:
            raise ValueError(
                f"DynamicEmbedding needs dim >= 1, mode in {MODES} and init_std >= 0; got "
                f"dim={dim}, mode={mode!r}, init_std={init_std}"
            )
        if min(admit_after, evict_after, capacity, seed) < 0:
            raise ValueError("admit_after, evict_after, capacity and seed must be >= 0")
        self.dim, self.mode, self.init_std = dim, mode, init_std
        self.admit_after, self.evict_after, self.capacity, self.seed = (
            admit_after,
            evict_after,
            capacity,
            seed,
        )
        # The rows a job ended with (a fetched model): ids sorted, weight in their order.
        self.register_buffer("ids", torch.zeros(0, dtype=torch.int64))
        self.weight = nn.Parameter(torch.zeros(0, dim), requires_grad=False)

    def extra_repr(self) -> str:
        return f"{self.dim}, mode={self.mode}, rows held={self.ids.numel()}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        ids = input.long()
        unique, inverse = torch.unique(ids, return_inverse=True)
        rows = self.rows_of(unique).to(self.weight.device)
        return pool(rows, inverse, self.mode)

    def rows_of(self, unique: torch.Tensor) -> torch.Tensor:
        """The held rows of ``unique`` (sorted ids), initial values for the others."""
        if bool((unique < 0).any()):
            raise IndexError(f"DynamicEmbedding ids must be >= 0; got {int(unique.min())}")
        rows = initial_rows(self.seed, unique.cpu().numpy(), self.dim, self.init_std)
        held = self.ids.cpu()
        if held.numel():
            at = torch.searchsorted(held, unique.cpu()).clamp(max=held.numel() - 1)
            found = held[at] == unique.cpu()
            rows[found] = self.weight.detach().cpu()[at[found]]
        return rows

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """A fetched model holds however many rows the job ended with: take their size."""
        ids, weight = state_dict.get(prefix + "ids"), state_dict.get(prefix + "weight")
        if isinstance(ids, torch.Tensor) and isinstance(weight, torch.Tensor):
            order = torch.argsort(ids)
            self.ids = ids[order].clone()
            self.weight = nn.Parameter(weight[order].clone(), requires_grad=False)
            state_dict = {**state_dict, prefix + "ids": self.ids, prefix + "weight": self.weight}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def pool(rows: torch.Tensor, inverse: torch.Tensor, mode: str | None) -> torch.Tensor:
    """``rows[inverse]``, pooled over the last input dimension when ``mode`` is set."""
    if mode is None:
        return F.embedding(inverse, rows)
    if inverse.dim() != 2:
        raise ValueError(
            f"mode {mode!r} pools bags: give (batch, ids) input, got {inverse.dim()}-D"
        )
    return F.embedding_bag(inverse, rows, mode=mode)
