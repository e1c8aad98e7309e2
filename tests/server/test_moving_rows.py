"""Table rows dealt out again over a new number of shards, shard to shard
(pscluster.server.tables.moving_rows, pscluster.server.adopted_rows): every row reaches the
shard that owns its id in the new layout, once, with its optimizer state; rows that do not
make up a shard's table exactly, or sources that do not go with the state, are refused. Whole
jobs moved with their tables are tests/coordinator/test_recut.py's and
tests/e2e/test_scale_tables.py's."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.model.partition import rows_partitioner
from pscluster.server.adopted_rows import RowSource, with_rows
from pscluster.server.tables.moving_rows import incoming, outgoing
from pscluster.server.tables.spec import TableSpec

DIM = 3


def fixed(rows: int, shards: int, index: int) -> TableSpec:
    return TableSpec("t", rows, DIM, shards, index)


def dynamic(shards: int, index: int, capacity: int = 0) -> TableSpec:
    return TableSpec("d", 0, DIM, shards, index, dynamic=True, capacity=capacity)


def fixed_shard(rows: int, shards: int, index: int) -> dict[str, torch.Tensor]:
    """Old shard ``index``'s table 0: row id ``i`` holds ``i`` everywhere (weight, adagrad sum)."""
    ids = (torch.arange(fixed(rows, shards, index).local_rows) * shards + index).float()
    return {"0.weight": ids[:, None].expand(-1, DIM).clone(), "0.opt.sum": ids * 10}


def moved(rows: int, old: int, new: int) -> list[dict[str, torch.Tensor]]:
    """Every new shard's table 0 from what each old shard sends it."""
    sent = [
        [outgoing(fixed_shard(rows, old, k), [fixed(rows, old, k)], new, j) for k in range(old)]
        for j in range(new)
    ]
    return [incoming(parts, [fixed(rows, new, j)]) for j, parts in enumerate(sent)]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), old=st.integers(1, 5), new=st.integers(1, 5))
def test_every_fixed_row_lands_at_its_new_owner_with_its_state(
    rows: int, old: int, new: int
) -> None:
    # Execute
    tables = moved(rows, old, new)

    # Assert: new shard j holds ids j, j + new, ... in order, each with its own state.
    for j, table in enumerate(tables):
        expected = (torch.arange(fixed(rows, new, j).local_rows) * new + j).float()
        assert torch.equal(table["0.opt.sum"], expected * 10)
        assert torch.equal(table["0.weight"][:, 0], expected)


def test_dynamic_rows_and_admission_counts_go_to_their_hash_owner_once() -> None:
    # Prepare: old shard 0 holds ids 100-104 in scattered slots (one slot free) and counts
    # 7 ids not admitted yet.
    ids = torch.arange(100, 105)
    slots = torch.tensor([5, 0, 3, 1, 2])
    weight = torch.zeros(6, DIM)
    weight[slots] = ids[:, None].float()
    old = {
        "0.weight": weight,
        "0.index.ids": ids,
        "0.index.slots": slots,
        "0.admission.ids": torch.arange(500, 507),
        "0.admission.counts": torch.arange(1, 8),
    }
    owner = rows_partitioner(True)

    # Execute
    tables = [incoming([outgoing(old, [dynamic(1, 0)], 3, j)], [dynamic(3, j)]) for j in range(3)]

    # Assert: each id once, at its owner, with its row; counts likewise.
    got = torch.cat([t["0.index.ids"] for t in tables])
    assert sorted(got.tolist()) == ids.tolist()
    for j, table in enumerate(tables):
        assert bool((owner.owner(table["0.index.ids"], 3) == j).all())
        assert torch.equal(table["0.weight"][:, 0], table["0.index.ids"].float())
        assert int(table["0.index.slots_in_use"]) == table["0.index.ids"].numel()
        counted = table["0.admission.ids"]
        assert bool((owner.owner(counted, 3) == j).all())
        assert torch.equal(table["0.admission.counts"], counted - 499)
    assert sum(t["0.admission.ids"].numel() for t in tables) == 7


def test_rows_that_do_not_make_up_the_table_exactly_are_refused() -> None:
    # Prepare: what two old shards send new shard 0 of 1 (rows 0 .. 9).
    parts = [outgoing(fixed_shard(10, 2, k), [fixed(10, 2, k)], 1, 0) for k in range(2)]
    one_missing = {k: v[:-1] for k, v in parts[1].items()}
    renamed = {k.replace("opt.sum", "opt.other"): v for k, v in parts[1].items()}

    # Execute / Assert
    with pytest.raises(FailedPrecondition, match=r"table 't'.*exactly once"):
        incoming([parts[0], one_missing], [fixed(10, 1, 0)])
    with pytest.raises(FailedPrecondition, match=r"table 't'.*exactly once"):
        incoming([parts[0], parts[0], parts[1]], [fixed(10, 1, 0)])
    with pytest.raises(FailedPrecondition, match=r"table 't'.*differing"):
        incoming([parts[0], renamed], [fixed(10, 1, 0)])


def test_a_dynamic_table_over_a_new_shards_capacity_is_refused() -> None:
    old = {
        "0.weight": torch.zeros(4, DIM),
        "0.index.ids": torch.arange(4),
        "0.index.slots": torch.arange(4),
        "0.admission.ids": torch.zeros(0, dtype=torch.int64),
        "0.admission.counts": torch.zeros(0, dtype=torch.int64),
    }
    sent = outgoing(old, [dynamic(1, 0)], 1, 0)
    with pytest.raises(FailedPrecondition, match=r"capacity of 3"):
        incoming([sent], [dynamic(1, 0, capacity=3)])


def _state(tables: bool, rows: bool) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    spec = fixed(4, 1, 0)
    tensors = {"values": torch.zeros(2)}
    if rows:
        tensors.update({f"tables.{k}": v for k, v in fixed_shard(4, 1, 0).items()})
    return tensors, {"config": {"tables": [spec.to_json()] if tables else []}}


def test_row_sources_must_go_with_the_state_they_complete() -> None:
    source = [RowSource("shard-a:1")]

    def fetch(address: str, shards: int, index: int) -> dict[str, torch.Tensor]:
        return outgoing(fixed_shard(4, 1, 0), [fixed(4, 1, 0)], shards, index)

    # A skeleton with tables gets its rows from its sources, through fetch.
    (tensors, _), read = with_rows("j", _state(tables=True, rows=False), source, None, fetch)
    assert torch.equal(tensors["tables.0.opt.sum"], torch.arange(4.0) * 10)
    assert read == 4 * (DIM + 1) * 4 + 4 * 8  # weight and sum float32, ids int64

    # Sources with a state that carries its rows, or has no tables, or none for a skeleton
    # with tables, or a local one without a copy here: refused.
    with pytest.raises(InvalidArgument, match="carries their rows"):
        with_rows("j", _state(tables=True, rows=True), source, None, fetch)
    with pytest.raises(InvalidArgument, match="has no embedding tables"):
        with_rows("j", _state(tables=False, rows=False), source, None, fetch)
    with pytest.raises(InvalidArgument, match="names no shards"):
        with_rows("j", _state(tables=True, rows=False), [], None, fetch)
    with pytest.raises(FailedPrecondition, match="no older copy"):
        with_rows("j", _state(tables=True, rows=False), [RowSource("", True)], None, fetch)
