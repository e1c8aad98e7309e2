"""A shard's embedding table, on its own: the row-wise optimizers against torch's own sparse
optimizers, and ids a shard must refuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pscluster.errors import InvalidArgument, ResourceExhausted
from pscluster.model.optimizer import OptimizerSpec
from pscluster.model.partition import HashRows, ModuloRows
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.domain import JobConfig
from pscluster.server.shard import Shard
from pscluster.server.tables.rows import RowGrads, decode_rows, encode_rows
from pscluster.server.tables.spec import TableSpec
from pscluster.server.tables.table import FixedTable
from pscluster.v1 import common_pb2

ROWS, DIM = 50, 4


def _torch_twin(name: str, initial: torch.Tensor) -> tuple[nn.Embedding, torch.optim.Optimizer]:
    emb = nn.Embedding(ROWS, DIM, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(initial)
    params = list(emb.parameters())
    if name == "sgd":
        return emb, torch.optim.SGD(params, lr=0.1)
    if name == "adagrad":
        return emb, torch.optim.Adagrad(params, lr=0.1)
    return emb, torch.optim.SparseAdam(params, lr=0.01)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "lazy_adam"])
def test_rows_step_as_torch_steps_a_sparse_embedding(name: str) -> None:
    # Prepare: the same rows in a one-shard table and in nn.Embedding(sparse=True).
    generator = torch.Generator().manual_seed(3)
    initial = torch.randn(ROWS, DIM, generator=generator)
    lr = 0.01 if name == "lazy_adam" else 0.1
    table = FixedTable(
        TableSpec("emb.weight", ROWS, DIM, 1, 0),
        SparseOptimizerSpec(name, lr, eps=1e-8 if name == "lazy_adam" else 1e-10),
        initial,
    )
    emb, opt = _torch_twin(name, initial)

    # Execute: batches with repeated ids, through both.
    for _ in range(6):
        ids = torch.randint(0, ROWS, (12,), generator=generator)
        target = torch.randn(12, DIM, generator=generator)
        opt.zero_grad()
        loss = ((emb(ids) - target) ** 2).sum()
        loss.backward()
        opt.step()
        rows = table.lookup(ids).requires_grad_(True)
        ((rows - target) ** 2).sum().backward()  # type: ignore[no-untyped-call]
        assert rows.grad is not None
        table.apply(ids, rows.grad)

    # Assert
    torch.testing.assert_close(table.values, emb.weight.detach(), rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_keeps_one_accumulator_per_row() -> None:
    initial = torch.zeros(ROWS, DIM)
    table = FixedTable(
        TableSpec("t", ROWS, DIM, 1, 0),
        SparseOptimizerSpec("rowwise_adagrad", 0.5, eps=1e-10),
        initial,
    )
    grad = torch.tensor([[1.0, 2.0, 3.0, 4.0]])

    table.apply(torch.tensor([7]), grad)

    acc = float((grad**2).mean())
    torch.testing.assert_close(table.values[7], -0.5 * grad[0] / acc**0.5)
    # values, accumulator, update count, dirty flag
    assert table.nbytes() == ROWS * DIM * 4 + ROWS * 4 + ROWS * 4 + ROWS
    assert float(table.values[6].abs().sum()) == 0.0


def test_ids_of_another_shard_or_outside_the_table_change_nothing() -> None:
    # Prepare: shard 1 of 2 holds the odd ids.
    table = FixedTable(TableSpec("t", 9, 2, 2, 1), SparseOptimizerSpec("sgd", 1.0), None)
    before = table.values.clone()

    # Execute / Assert
    for bad, why in [(4, "owned by shard 0"), (9, "outside the table"), (-1, "outside")]:
        with pytest.raises(InvalidArgument, match=why):
            table.apply(torch.tensor([1, bad]), torch.ones(2, 2))
    with pytest.raises(InvalidArgument, match="expected"):
        table.check_gradient(torch.tensor([1, 3]), torch.ones(2, 3))
    assert torch.equal(table.values, before)
    assert table.spec.local_rows == 4
    assert table.lookup(torch.tensor([7, 1, 7])).shape == (3, 2)


def test_padding_row_starts_at_zero_and_never_moves() -> None:
    table = FixedTable(
        TableSpec("t", 6, 3, 1, 0, padding_idx=2), SparseOptimizerSpec("sgd", 1.0), None
    )
    table.apply(torch.tensor([2, 3]), torch.ones(2, 3))
    assert float(table.values[2].abs().sum()) == 0.0


def test_drawn_rows_depend_on_the_seed_only() -> None:
    spec = TableSpec("t", 1000, 8, 2, 0, init_seed=5)
    a = FixedTable(spec, SparseOptimizerSpec("sgd", 1.0), None).values
    b = FixedTable(spec, SparseOptimizerSpec("sgd", 1.0), None).values
    other = FixedTable(
        TableSpec("t", 1000, 8, 2, 0, init_seed=6), SparseOptimizerSpec("sgd", 1.0), None
    ).values
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert abs(float(a.std()) - 1.0) < 0.05


def test_row_blocks_round_trip_in_half_precision() -> None:
    ids = torch.tensor([5, 1, 9])
    grads = torch.randn(3, 4)
    infos, data = encode_rows({1: (ids, grads)}, common_pb2.DTYPE_FLOAT16)

    decoded = decode_rows(infos, [2, 4], data)

    got_ids, got = decoded.blocks[1]
    assert torch.equal(got_ids, ids)
    torch.testing.assert_close(got, grads.half().float())
    with pytest.raises(InvalidArgument, match="announces"):
        decode_rows(infos, [2, 4], data[:-1])
    merged = RowGrads.merged([decoded, decoded])
    assert merged.rows == 6


def test_hashed_ids_with_shared_low_bits_spread_over_the_shards() -> None:
    # Ids that are all multiples of 4 (timestamps, strided hashes): modulo 4 puts every one on
    # shard 0; the hash partitioner of dynamic tables spreads them.
    ids = torch.arange(0, 4 * 10_000, 4)
    assert set(ModuloRows().owner(ids, 4).tolist()) == {0}
    counts = torch.bincount(HashRows().owner(ids, 4), minlength=4)
    assert int(counts.min()) > 2300


def test_a_shard_refuses_tables_past_its_limit_before_allocating_them() -> None:
    config = JobConfig(
        "big",
        0,
        4,
        "async",
        0,
        OptimizerSpec(name="sgd", lr=0.1),
        tables=(TableSpec("emb.weight", 10**12, 16, 2, 0),),  # 8e12 values on this shard
        sparse_optimizer=SparseOptimizerSpec("sgd", 0.1),
    )
    with pytest.raises(ResourceExhausted, match="parameters and table rows"):
        Shard(max_values=10**9).check_new(config)
