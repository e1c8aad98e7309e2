"""Where a job's embedding tables start (pscluster.client.initial): a small table starts with
the rows its model's constructor gives it, as the same model built in one process under the
job's seed does (custom initialisation included); a large one is never built where the job is
submitted and starts as N(0, 1) rows drawn on the shards, so a constructor that changes it in
place is refused at submit rather than silently ignored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pscluster.client.errors import InvalidJobError
from pscluster.client.initial import KEPT_TABLE_BYTES, build

SEED = 5
BIG_ROWS = KEPT_TABLE_BYTES // (16 * 4) + 1  # one row over the limit at width 16


class SmallRatings(nn.Module):
    """User and item factors at std 0.05, zero biases: not nn.Embedding's N(0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(30, 4, sparse=True)
        self.item = nn.EmbeddingBag(50, 4, mode="sum", sparse=True)
        self.bias = nn.Embedding(30, 1, sparse=True)
        self.head = nn.Linear(4, 1)
        nn.init.normal_(self.user.weight, std=0.05)
        with torch.no_grad():
            self.item.weight.mul_(0.05)
            self.bias.weight.zero_()

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.user(user) * self.item(items)) + self.bias(user)
        return out


class BigTable(nn.Module):
    def __init__(self, std: float | None = None) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(BIG_ROWS, 16, mode="mean", sparse=True)
        self.head = nn.Linear(16, 2)
        if std is not None:
            nn.init.normal_(self.emb.weight, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.emb(ids))
        return out


def test_a_small_table_starts_with_its_constructors_rows_as_in_one_process() -> None:
    # Execute
    initial = build(SmallRatings, {}, SEED, None)

    # Assert: every entry, tables and dense alike, is what one process builds under the seed
    torch.manual_seed(SEED)
    expected = SmallRatings().state_dict()
    assert [t.name for t in initial.tables] == ["user.weight", "item.weight", "bias.weight"]
    assert initial.state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(initial.state[name], value), name
    assert float(initial.state["bias.weight"].abs().sum()) == 0.0


def test_a_large_table_is_drawn_on_the_shards_unless_its_constructor_changed_it() -> None:
    # A large table left as nn.Embedding builds it: no rows here (the shards draw them)
    plain = build(BigTable, {}, SEED, None)
    assert [t.name for t in plain.tables] == ["emb.weight"]
    assert "emb.weight" not in plain.state

    # One its constructor re-initialised: refused, naming the way out
    with pytest.raises(InvalidJobError, match=r"emb\.weight.*init_from"):
        build(BigTable, {"std": 0.01}, SEED, None)

    # ... which works: the rows given start the table
    rows = torch.full((BIG_ROWS, 16), 0.01)
    given = build(BigTable, {"std": 0.01}, SEED, {"emb.weight": rows})
    assert torch.equal(given.state["emb.weight"], rows)
