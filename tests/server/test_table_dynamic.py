"""DynamicTable: deterministic rows, the same steps as a fixed table, admission, eviction,
checkpoints and replay, and its size at a million rows."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.errors import InvalidArgument
from pscluster.model.partition import HashRows
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.dynamic import DynamicTable
from pscluster.server.tables.initial import initial_rows
from pscluster.server.tables.spec import TableSpec
from pscluster.server.tables.table import FixedTable

DIM = 8
OPTIMIZERS = {
    "sgd": SparseOptimizerSpec(name="sgd", lr=0.1),
    "adagrad": SparseOptimizerSpec(name="adagrad", lr=0.1, eps=1e-10, initial_accumulator=0.1),
    "rowwise_adagrad": SparseOptimizerSpec(name="rowwise_adagrad", lr=0.1, eps=1e-10),
    "lazy_adam": SparseOptimizerSpec(name="lazy_adam", lr=0.01, eps=1e-8),
}


def table(
    optimizer: str = "adagrad",
    *,
    admit_after: int = 0,
    evict_after: int = 0,
    capacity: int = 0,
    shards: int = 1,
    shard_index: int = 0,
) -> DynamicTable:
    spec = TableSpec(
        name="emb",
        num_rows=0,
        dim=DIM,
        shards=shards,
        shard_index=shard_index,
        init_seed=11,
        dynamic=True,
        init_std=0.05,
        admit_after=admit_after,
        evict_after=evict_after,
        capacity=capacity,
    )
    return DynamicTable(spec, OPTIMIZERS[optimizer])


def ids_of(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64)


def initial(t: DynamicTable, ids: torch.Tensor) -> torch.Tensor:
    return initial_rows(t.spec.init_seed, ids.numpy(), DIM, t.spec.init_std)


def counting(tensors: dict[str, torch.Tensor]) -> dict[int, int]:
    """The admission counts by id (a restored counter may keep them in another order)."""
    ids, counts = tensors["admission.ids"].tolist(), tensors["admission.counts"].tolist()
    return dict(zip(ids, counts, strict=True))


def same_state(a: DynamicTable, b: DynamicTable, counts: bool = True) -> None:
    """The same rows in the same slots, bit for bit (and the same admission counts)."""
    (ta, sa), (tb, sb) = a.state(), b.state()
    assert sa == sb
    assert ta.keys() == tb.keys()
    for name in ta:
        if not name.startswith("admission."):
            assert torch.equal(ta[name], tb[name]), name
    if counts:
        assert counting(ta) == counting(tb)


# --- initial rows ---


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=40, unique=True),
    seed=st.integers(0, 2**64 - 1),
    dim=st.integers(1, 9),
)
def test_initial_rows_depend_on_seed_and_id_alone(ids: list[int], seed: int, dim: int) -> None:
    # Prepare: the same ids in a batch, reversed, and one at a time
    arr = np.array(ids, np.int64)

    # Execute
    batch = initial_rows(seed, arr, dim, 0.5)
    reverse = initial_rows(seed, arr[::-1].copy(), dim, 0.5)
    single = torch.cat([initial_rows(seed, arr[i : i + 1], dim, 0.5) for i in range(arr.size)])

    # Assert
    assert batch.dtype == torch.float32 and batch.shape == (len(ids), dim)
    assert torch.equal(batch, reverse.flip(0))
    assert torch.equal(batch, single)
    assert torch.isfinite(batch).all()


def test_initial_rows_are_normal_with_init_std_and_differ_by_id_and_seed() -> None:
    ids = np.arange(0, 3 * 40_000, 3, dtype=np.int64)  # strided, as one shard's ids are
    rows = initial_rows(5, ids, 16, 0.2)
    assert abs(float(rows.mean())) < 0.002
    assert abs(float(rows.std()) - 0.2) < 0.002
    assert abs(float((rows / 0.2).pow(4).mean()) - 3.0) < 0.1  # normal, not uniform, tails
    assert torch.unique(rows, dim=0).shape[0] == ids.size
    assert not torch.equal(rows[:10], initial_rows(6, ids[:10], 16, 0.2))
    assert torch.equal(initial_rows(5, ids[:3], 16, 0.0), torch.zeros(3, 16))


def owned_by(shard: int, shards: int, count: int, start: int = 0) -> list[int]:
    """The first ``count`` ids from ``start`` that shard ``shard`` of ``shards`` owns."""
    candidates = torch.arange(start, start + 64 * count + 64)
    owner = HashRows().owner(candidates, shards)
    return candidates[owner == shard][:count].tolist()


def test_rows_start_the_same_whatever_order_or_batch_first_touches_them() -> None:
    # Prepare: one shard of one, and shard 0 of 3, that see the ids differently
    near = owned_by(0, 3, 3)
    far = [
        i
        for i in (3 * 2**40, 3 * 2**60, 2**62 + 7, 2**50 + 1, 2**45 + 9)
        if HashRows().owner(torch.tensor([i]), 3)[0] == 0
    ]
    ids = ids_of(*near, *far)
    one, other = table(), table(shards=3, shard_index=0)

    # Execute
    one.lookup(ids)
    for i in reversed(range(ids.numel())):
        other.lookup(ids[i : i + 1].repeat(3))

    # Assert
    assert torch.equal(one.lookup(ids), other.lookup(ids))
    assert torch.equal(one.lookup(ids), initial(one, ids))


# --- the same steps as a fixed table ---


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_one_shard_steps_as_a_fixed_table_does(optimizer: str) -> None:
    # Prepare: arbitrary large ids for the dynamic table, 0..k-1 for the fixed one
    rng = np.random.default_rng(3)
    big = np.unique(rng.integers(0, 2**62, 50)).astype(np.int64)
    dynamic = table(optimizer)
    fixed_spec = TableSpec(name="emb", num_rows=big.size, dim=DIM, shards=1, shard_index=0)
    fixed = FixedTable(fixed_spec, OPTIMIZERS[optimizer], initial(dynamic, torch.from_numpy(big)))

    # Execute: batches with repeats, looked up then pushed, as a worker does
    for _ in range(6):
        local = torch.from_numpy(rng.integers(0, big.size, 40))
        grads = torch.from_numpy(rng.normal(size=(40, DIM)).astype(np.float32))
        assert torch.equal(dynamic.lookup(torch.from_numpy(big)[local]), fixed.lookup(local))
        assert dynamic.apply(torch.from_numpy(big)[local], grads) == fixed.apply(local, grads)

    # Assert: bit for bit
    assert torch.equal(dynamic.lookup(torch.from_numpy(big)), fixed.lookup(torch.arange(big.size)))
    assert dynamic.rows == big.size and dynamic.dropped_rows == 0


# --- admission ---


def test_ids_are_admitted_at_their_third_lookup() -> None:
    # Prepare
    t = table("sgd", admit_after=3)
    cold, grad = ids_of(42, 42), torch.ones(2, DIM)

    # Execute / Assert: twice seen, it reads its initial row and its gradient is dropped
    for _ in range(2):
        assert torch.equal(t.lookup(cold), initial(t, cold))
        assert t.apply(cold, grad) == 0
    assert t.rows == 0 and t.dropped_rows == 2 and t.take_admitted().size == 0

    # the third lookup admits it (once, though it is there twice)
    assert torch.equal(t.lookup(cold), initial(t, cold))
    assert t.take_admitted().tolist() == [42] and t.take_admitted().size == 0
    assert t.apply(cold, grad) == 1
    assert torch.allclose(t.lookup(ids_of(42)), initial(t, ids_of(42)) - 0.1 * 2)
    assert (t.rows, t.admitted, t.dropped_rows) == (1, 1, 2)


def test_admit_is_idempotent_and_recorded_in_order_of_first_appearance() -> None:
    t = table()
    assert t.admit(ids_of(5, 3, 5)) == 2
    assert t.admit(np.array([3, 8], np.int64)) == 1
    assert t.take_admitted().tolist() == [5, 3, 8]
    assert t.rows == 3 == t.admitted


# --- eviction ---


def test_rows_not_updated_within_evict_after_are_evicted() -> None:
    # Prepare: id 1 is pushed every apply, id 2 at the first only
    t = table("sgd", evict_after=24)
    t.admit(ids_of(1, 2))
    t.apply(ids_of(1, 2), torch.ones(2, DIM))

    # Execute: at apply 26 id 2 has gone untouched for 25 applies, more than 24 (ages tick
    # every max(1, 24 // 16) = 1 apply, so eviction is exact)
    rows = []
    for _ in range(2, 31):
        t.apply(ids_of(1), torch.ones(1, DIM))
        rows.append(t.rows)

    # Assert
    assert rows == [2] * 24 + [1] * 5  # applies 2..25, then 26..30
    assert t.index.find(np.array([1, 2])).tolist() == [0, -1] and t.evicted == 1


def test_beyond_capacity_the_least_often_updated_rows_go() -> None:
    # Prepare: at capacity, 10 updated twice, 20 once, 30 never
    t = table("sgd", capacity=3)
    t.admit(ids_of(10, 20, 30))
    t.apply(ids_of(10, 20), torch.ones(2, DIM))
    t.apply(ids_of(10), torch.ones(1, DIM))
    t.admit(ids_of(40, 50))
    assert t.rows == 5 and t.evicted == 0  # admitting does not evict; the next apply does

    # Execute: 40 gets an update; 30 and 50 never had one
    t.apply(ids_of(40), torch.ones(1, DIM))
    first = t.index.find(np.array([10, 20, 30, 40, 50])) >= 0
    t.admit(ids_of(60))
    t.apply(ids_of(60, 10), torch.ones(2, DIM))  # 20, 40 and 60 have one update; 20's is oldest
    second = t.index.find(np.array([10, 20, 40, 60])) >= 0

    # Assert
    assert first.tolist() == [True, True, False, True, False]
    assert second.tolist() == [True, False, True, True]
    assert (t.rows, t.evicted, t.admitted) == (3, 3, 6)


def test_an_evicted_id_comes_back_as_new() -> None:
    # Prepare: a row moved by lazy_adam, then left behind while another row is pushed
    t = table("lazy_adam", evict_after=2)
    t.admit(ids_of(7, 8))
    for _ in range(2):
        t.apply(ids_of(7), torch.ones(1, DIM))
    for _ in range(3):
        t.apply(ids_of(8), torch.ones(1, DIM))
    assert t.index.find(np.array([7, 8])).tolist() == [-1, 1] and t.evicted == 1

    # Execute
    back = t.lookup(ids_of(7))

    # Assert: its initial values, in its old slot, with a fresh optimizer state
    assert torch.equal(back, initial(t, ids_of(7)))
    assert t.index.find(np.array([7])).tolist() == [0]
    opt = {k: v for k, v in t.state()[0].items() if k.startswith("opt.")}
    assert opt.keys() == {"opt.exp_avg", "opt.exp_avg_sq"}
    assert all(float(v[0].abs().sum()) == 0.0 for v in opt.values())
    assert t.take_admitted().tolist() == [7, 8, 7]
    assert (t.rows, t.admitted, t.evicted) == (2, 3, 1)


# --- errors ---


def test_ids_of_other_shards_or_bad_gradients_change_nothing() -> None:
    # Prepare: shard 1 of 3, with rows
    t = table("adagrad", shards=3, shard_index=1)
    a, b, c = owned_by(1, 3, 3)
    (of_two,), (of_zero,) = owned_by(2, 3, 1), owned_by(0, 3, 1)
    t.lookup(ids_of(a, b, c))
    t.apply(ids_of(a, b), torch.ones(2, DIM))
    before = t.state()

    # Execute / Assert
    with pytest.raises(InvalidArgument, match=f"id {of_two} is owned by shard 2 of 3"):
        t.lookup(ids_of(a, of_two, b))
    with pytest.raises(InvalidArgument, match="id -2 is negative"):
        t.apply(ids_of(a, -2), torch.ones(2, DIM))
    with pytest.raises(InvalidArgument, match=f"id {of_zero} is owned by shard 0"):
        t.admit(ids_of(c, of_zero))
    with pytest.raises(InvalidArgument, match=r"expected \(2, 8\)"):
        t.check_gradient(ids_of(a, b), torch.ones(2, DIM + 1))
    with pytest.raises(InvalidArgument, match=f"id {of_zero} is owned"):
        t.check_gradient(ids_of(a, of_zero), torch.ones(2, DIM))
    with pytest.raises(InvalidArgument, match="1-D int64"):
        t.lookup(torch.tensor([1.0]))
    t.check_gradient(ids_of(a, b), torch.ones(2, DIM))
    after = t.state()
    assert before[1] == after[1] and t.take_admitted().tolist() == sorted([a, b, c])
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


# --- checkpoints and replay ---


def test_a_checkpoint_that_does_not_fit_changes_nothing() -> None:
    t = table("adagrad")
    t.lookup(ids_of(1, 2))
    tensors, scalars = t.state()
    before = t.lookup(ids_of(1, 2, 3))
    for broken in (
        {**tensors, "values": tensors["values"][:1]},
        {**tensors, "opt.sum": tensors["opt.sum"][:, :2]},
    ):
        with pytest.raises(InvalidArgument, match="a bad checkpoint"):
            t.load(broken, scalars)
    with pytest.raises(InvalidArgument, match="updates"):
        t.load(tensors, {})
    assert torch.equal(t.lookup(ids_of(1, 2, 3)), before) and t.rows == 3


Log = list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]


POOL = torch.tensor(owned_by(2, 5, 10_000))  # the ids shard 2 of 5 owns, from 0 on


def run_steps(t: DynamicTable, rng: np.random.Generator, steps: int, log: Log) -> None:
    """Lookups and pushes of a skewed id stream; logs (admitted ids, ids, grads) per step."""
    for _ in range(steps):
        ranks = torch.from_numpy((rng.zipf(1.3, 60) * 5 + 2).astype(np.int64) % 10_000)
        ids = POOL[ranks]
        t.lookup(ids)
        grads = torch.from_numpy(rng.normal(size=(ids.numel(), DIM)).astype(np.float32))
        log.append((t.take_admitted(), ids, grads))
        t.apply(ids, grads)


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "lazy_adam"])
def test_state_and_load_then_the_same_behaviour(optimizer: str) -> None:
    # Prepare: a table with admission, eviction and churn behind it
    fields = {"admit_after": 2, "evict_after": 12, "capacity": 150, "shards": 5, "shard_index": 2}
    live = table(optimizer, **fields)
    run_steps(live, np.random.default_rng(1), 30, [])

    # Execute
    restored = table(optimizer, **fields)
    restored.load(*live.state())
    for t in (live, restored):
        run_steps(t, np.random.default_rng(2), 20, [])

    # Assert
    same_state(live, restored)
    probe = POOL
    assert torch.equal(live.lookup(probe), restored.lookup(probe))
    assert live.evicted > 0 and live.dropped_rows > 0


def test_replaying_admissions_and_pushes_rebuilds_the_live_table() -> None:
    # Prepare: the live shard, its log, and a checkpoint taken part way
    fields = {"admit_after": 2, "evict_after": 8, "capacity": 120, "shards": 5, "shard_index": 2}
    live, log = table("lazy_adam", **fields), Log()
    run_steps(live, np.random.default_rng(4), 15, log)
    checkpoint = live.state()
    run_steps(live, np.random.default_rng(5), 25, log)

    # Execute: from nothing, and from the checkpoint
    replayed, resumed = table("lazy_adam", **fields), table("lazy_adam", **fields)
    resumed.load(*checkpoint)
    for t, entries in ((replayed, log), (resumed, log[15:])):
        for admitted, ids, grads in entries:
            t.admit(admitted)
            t.apply(ids, grads)

    # Assert: the same rows in the same slots; only the admission counts (not logged) differ
    assert live.evicted > 0
    same_state(live, replayed, counts=False)
    same_state(live, resumed, counts=False)


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "lazy_adam"])
def test_deltas_on_a_full_checkpoint_rebuild_the_table_slot_for_slot(optimizer: str) -> None:
    # Prepare: a full checkpoint, then two intervals of churn (admissions, evictions, slots
    # reused), each closed by a delta
    fields = {"admit_after": 2, "evict_after": 12, "capacity": 150, "shards": 5, "shard_index": 2}
    live = table(optimizer, **fields)
    run_steps(live, np.random.default_rng(1), 30, [])
    base = live.state()
    live.mark_clean()
    evicted, deltas = live.evicted, []
    for seed in (2, 3):
        run_steps(live, np.random.default_rng(seed), 6, [])
        deltas.append(live.delta())

    # Execute
    restored = table(optimizer, **fields)
    restored.load(*base)
    for delta in deltas:
        restored.load_delta(*delta)

    # Assert: slot for slot, and the same from there on; a delta holds the changed rows only
    assert live.evicted > evicted
    same_state(live, restored)
    assert 0 < deltas[-1][0]["slots"].numel() < live.rows
    assert deltas[-1][0]["rows.values"].shape == (deltas[-1][0]["slots"].numel(), DIM)
    for t in (live, restored):
        run_steps(t, np.random.default_rng(4), 10, [])
    same_state(live, restored)


def test_a_delta_that_does_not_fit_changes_nothing() -> None:
    t = table("adagrad")
    t.lookup(ids_of(1, 2))
    t.mark_clean()
    t.apply(ids_of(1), torch.ones(1, DIM))
    tensors, scalars = t.delta()
    before = t.state()
    for broken in (
        {**tensors, "free": torch.tensor([0])},  # slot 0 both free and held
        {**tensors, "rows.values": tensors["rows.values"][:, :2]},
        {**tensors, "age": tensors["age"].to(torch.int32)},
    ):
        with pytest.raises(InvalidArgument, match="a bad delta"):
            t.load_delta(broken, scalars)
    after = t.state()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


# --- size ---


def test_a_million_rows_insert_and_a_lookup_of_100k() -> None:
    # Prepare
    spec = TableSpec(name="emb", num_rows=0, dim=16, shards=1, shard_index=0, dynamic=True)
    t = DynamicTable(spec, OPTIMIZERS["rowwise_adagrad"])
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 2**62, 1_000_000))
    query = ids[torch.from_numpy(rng.integers(0, ids.numel(), 100_000))]

    # Execute
    start = time.perf_counter()
    t.admit(ids)
    admitted = time.perf_counter()
    rows = t.lookup(query)
    looked_up = time.perf_counter()

    # Assert (no timing: shared machines) and report
    assert t.rows == 1_000_000 and rows.shape == (100_000, 16)
    assert torch.equal(rows[:5], initial_rows(0, query[:5].numpy(), 16, 1.0))
    per_row = t.nbytes() / t.rows
    print(
        f"\n1M rows: admit {admitted - start:.2f} s, lookup of 100k {looked_up - admitted:.3f} s"
        f", {per_row:.1f} B per row ({per_row / 68:.2f}x values and optimizer state)"
    )
    assert per_row < 2 * 68
