"""A running job's shard states cut over a new number of shards (pscluster.coordinator.recut):
trained on with the same pushes, the moved job is bit for bit the unmoved one, and the one
on a single whole-vector shard; what cannot be carried exactly is refused."""

from __future__ import annotations

import pytest
import torch

from pscluster.coordinator.stats import aggregate
from pscluster.errors import InvalidArgument
from pscluster.server.convert import job_stats
from pscluster.server.domain import Outcome
from pscluster.v1 import common_pb2
from tests.coordinator.recut_layouts import (
    ADAGRAD,
    ADAM,
    BUFFERS,
    COUNTER,
    LAZY_ADAM,
    ROWS,
    SGD,
    VALUES,
    Layout,
    protos,
    recut,
    rows,
)

F32 = common_pb2.DTYPE_FLOAT32
OPT_STATE = {"sgd": ["opt.momentum_buffer"], "adam": ["opt.exp_avg", "opt.exp_avg_sq"]}
DYNAMIC_IDS = [5, 17, 123456789, 42, 7, 99, 2**40 + 3]


def moved_to(layout: Layout, shards: int, generation: int = 1, **settings: object) -> Layout:
    return Layout.adopted(recut(layout.states(), protos(shards, **settings), generation))  # type: ignore[arg-type]


def step(layouts: list[Layout], seq: int, mode: str) -> None:
    """Both workers push gradient ``seq``; in sync the second push closes the step."""
    for worker in ("a", "b"):
        results = [r for layout in layouts for r in layout.push(worker, seq)]
        applied = mode == "async" or worker == "b"
        assert {r.outcome for r in results} == {Outcome.APPLIED if applied else Outcome.BUFFERED}


def same_job(moved: Layout, *others: Layout, names: list[str]) -> None:
    for other in others:
        for name in ["values", *names]:
            assert torch.equal(moved.dense(name), other.dense(name)), name
        assert torch.equal(moved.buffers(), other.buffers())
        assert {j.version for j in moved.jobs} == {j.version for j in other.jobs}


@pytest.mark.parametrize("optimizer", [SGD, ADAM], ids=lambda o: o.name)
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", [(2, 3), (3, 2, 1)], ids=["2to3", "3to2to1"])
def test_a_moved_job_trains_on_exactly_as_the_unmoved_one(
    optimizer: common_pb2.OptimizerConfig, mode: str, path: tuple[int, ...]
) -> None:
    # Prepare: the job on path[0] shards, its unmoved twin, and the job on one shard
    settings = {"mode": mode, "optimizer": optimizer}
    moved, unmoved, whole = (Layout.new(n, **settings) for n in (path[0], path[0], 1))
    for layout in (moved, unmoved, whole):
        layout.members(["a", "b"])
    for seq in range(1, 4):
        step([moved, unmoved, whole], seq, mode)

    # Execute: through each shard count, training in between
    for generation, shards in enumerate(path[1:], start=1):
        moved = moved_to(moved, shards, generation, **settings)
        for seq in range(2 + 2 * generation, 4 + 2 * generation):
            step([moved, unmoved, whole], seq, mode)

    # Assert: values, optimizer state (and Adam's step on every shard), buffers, versions
    assert len(moved.jobs) == path[-1]
    same_job(moved, unmoved, whole, names=OPT_STATE[optimizer.name])
    if optimizer.name == "adam":
        steps = {float(t["opt.step"]) for t, _ in [*moved.states(), *whole.states()]}
        moves = len(path) - 1
        assert steps == ({3.0 + 2 * moves} if mode == "sync" else {6.0 + 4 * moves})


def test_buffers_counters_and_held_zeros_are_cut_by_offset() -> None:
    # Prepare: sync, so the counter buffer sums both pushes of a step and the rest averages
    moved, unmoved = Layout.new(3), Layout.new(3)
    for layout in (moved, unmoved):
        layout.members(["a", "b"])
    step([moved, unmoved], 1, "sync")

    # Execute
    moved = moved_to(moved, 2)
    step([moved, unmoved], 2, "sync")

    # Assert: the zeros held where the initial values were zero (weight decay, momentum and
    # the gradient would move them), the counter counted all four batches
    mask = torch.zeros_like(VALUES, dtype=torch.bool)
    mask[2:8] = VALUES[2:8] == 0
    held = [
        t.get("hold_zeros", torch.zeros(len(t["values"]), dtype=torch.uint8))
        for t, _ in moved.states()
    ]
    assert torch.equal(torch.cat(held).bool(), mask) and bool(mask.any())
    assert bool((moved.dense("values")[mask] == 0).all())
    assert moved.buffers()[COUNTER[0]] == BUFFERS[COUNTER[0]] + 4
    same_job(moved, unmoved, names=OPT_STATE["sgd"])


def test_an_open_sync_step_is_cut_and_closes_on_the_new_shards() -> None:
    # Prepare: a's push for step 1 is held (with rows of both tables) when the job moves
    moved, unmoved, whole = (Layout.new(n, sparse=ADAGRAD) for n in (2, 2, 1))
    dynamic = torch.tensor(DYNAMIC_IDS)
    for layout in (moved, unmoved, whole):
        layout.members(["a", "b"])
        for _ in range(2):  # admitted at the second lookup
            layout.lookup(1, dynamic)
        step([layout], 1, "sync")
        held = layout.push("a", 2, {0: rows(2, [0, 3, 3, 12]), 1: rows(2, DYNAMIC_IDS[:5])})
        assert {r.outcome for r in held} == {Outcome.BUFFERED}

    # Execute
    moved = moved_to(moved, 3, sparse=ADAGRAD)
    for layout in (moved, unmoved, whole):
        closing = layout.push("b", 2, {0: rows(3, [3, 5]), 1: rows(3, DYNAMIC_IDS[2:])})
        assert {r.outcome for r in closing} == {Outcome.APPLIED}

    # Assert: both pushes averaged into one step, on the values, buffers and rows
    same_job(moved, unmoved, whole, names=OPT_STATE["sgd"])
    for table in (0, 1):
        for name, tensor in unmoved.table(table).items():
            assert torch.equal(moved.table(table)[name], tensor), (table, name)


@pytest.mark.parametrize("path", [(2, 3), (3, 2)], ids=["2to3", "3to2"])
def test_table_rows_and_their_optimizer_state_move_to_their_new_owners(
    path: tuple[int, int],
) -> None:
    # Prepare: rows pushed to both tables, dynamic ids admitted and two still being counted
    moved, unmoved = (
        Layout.new(path[0], sparse=ADAGRAD, mode="async"),
        Layout.new(path[0], sparse=ADAGRAD, mode="async"),
    )
    pending = torch.tensor([1000, 2**33 + 1])
    for layout in (moved, unmoved):
        layout.members(["a"])
        for _ in range(2):
            layout.lookup(1, torch.tensor(DYNAMIC_IDS))
        layout.lookup(1, pending)
        for seq in (1, 2):
            layout.push("a", seq, {0: rows(seq, [0, 4, 4, 12, 7]), 1: rows(seq, DYNAMIC_IDS)})

    # Execute: move; the pending ids' second lookup admits them on the new shards too
    moved = moved_to(moved, path[1], sparse=ADAGRAD, mode="async")
    for layout in (moved, unmoved):
        layout.lookup(1, pending)
        ids = [*DYNAMIC_IDS[1:4], *pending.tolist()]
        layout.push("a", 3, {0: rows(3, [1, 4, 11]), 1: rows(3, ids)})

    # Assert: every row, its adagrad sum and its update count, by id; lookups by owner
    for table in (0, 1):
        after, expected = moved.table(table), unmoved.table(table)
        assert after.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(after[name], tensor), (table, name)
    assert moved.table(1)["ids"].numel() == len(DYNAMIC_IDS) + 2
    every = torch.arange(ROWS)
    assert torch.equal(moved.lookup(0, every), unmoved.lookup(0, every))
    assert torch.equal(moved.lookup(1, pending, peek=True), unmoved.lookup(1, pending, peek=True))
    stranger = int((moved.owner(0, every) != 0).nonzero()[0, 0])
    with pytest.raises(InvalidArgument, match="owned by shard"):
        moved.jobs[0].lookup(0, torch.tensor([stranger]))


def test_the_job_keeps_its_consistency_version_and_ledger() -> None:
    # Prepare: switched live from sync to ssp (revision 1); the new configs say "sync"
    layout = Layout.new(2)
    layout.members(["a", "b"])
    for job in layout.jobs:
        job.set_consistency("ssp", 3, 0, 1)
    results = [layout.push("a", seq)[0] for seq in (1, 2)]

    # Execute
    states = recut(layout.states(), protos(3, mode="sync"), 7)

    # Assert: ssp and its revision, the version, the new layout generation
    for _, meta in states:
        assert (meta["config"]["mode"], meta["config"]["staleness"]) == ("ssp", 3)
        assert (meta["consistency_revision"], meta["version"]) == (1, 2)
        assert meta["config"]["layout_generation"] == 7 and meta["generation"] == 1
    moved = Layout.adopted(states)
    assert {j.config.mode for j in moved.jobs} == {"ssp"}
    assert [j.stats().worker_clocks for j in moved.jobs] == [{"a": 2, "b": 0}] * 3
    # a retry of the last push is answered as before, not applied again
    before = moved.dense("values")
    retried = moved.push("a", 2)
    assert all(r.duplicate and r.outcome is results[-1].outcome for r in retried)
    assert torch.equal(moved.dense("values"), before)
    assert {r.outcome for r in moved.push("a", 3)} == {Outcome.APPLIED}


def test_versions_that_differ_become_the_highest() -> None:
    # Prepare: the second push reached shard 0 only (refused on shard 1, say)
    layout = Layout.new(2, mode="async")
    layout.members(["a"])
    layout.push("a", 1)
    layout.push("a", 2, only=0)
    assert [j.version for j in layout.jobs] == [2, 1]

    # Execute
    moved = moved_to(layout, 3, mode="async")

    # Assert: a push based on a pull from any new shard is taken
    assert {j.version for j in moved.jobs} == {2}
    assert [j.stats().worker_clocks for j in moved.jobs] == [{"a": 2}] * 3
    assert {r.outcome for r in moved.push("a", 3)} == {Outcome.APPLIED}


def test_job_totals_over_the_new_shards_are_the_old_totals() -> None:
    # Prepare: pushes, a stale one (refused), a duplicate, pulls
    layout = Layout.new(3)
    layout.members(["a", "b"])
    step([layout], 1, "sync")
    assert {r.outcome for r in layout.push("a", 2, lag=1)} == {Outcome.STALE}
    layout.push("a", 2, lag=1)
    for job in layout.jobs:
        with job.pull("a", 0, F32, 1.0):
            pass
    before = aggregate("j", [job_stats(j.stats(), str(i)) for i, j in enumerate(layout.jobs)])

    # Execute
    for shards in (2, 4):
        moved = moved_to(layout, shards)
        after = aggregate("j", [job_stats(j.stats(), str(i)) for i, j in enumerate(moved.jobs)])

        # Assert: every sum the coordinator reports, and the shards' own counts
        for name in ("pushes_applied", "bytes_pushed", "bytes_pushed_raw", "bytes_pulled", "pulls"):
            assert getattr(after, name) == getattr(before, name) > 0, name
        for name in ("pushes_rejected", "staleness", "clock_staleness"):
            assert dict(getattr(after, name)) == dict(getattr(before, name)), name
        assert before.pushes_rejected["stale"] == 3
        for name in ("pushes_received", "steps_applied", "pushes_duplicate"):
            total = sum(getattr(s, name) for s in after.shards)
            assert total == sum(getattr(s, name) for s in before.shards) > 0, name


def test_differing_adam_steps_refuse_the_move() -> None:
    layout = Layout.new(2, mode="async", optimizer=ADAM)
    layout.members(["a"])
    layout.push("a", 1)
    layout.push("a", 2, only=0)

    with pytest.raises(ValueError, match="'step' differs"):
        recut(layout.states(), protos(3, mode="async", optimizer=ADAM), 1)


def test_an_open_step_not_held_on_every_shard_refuses_the_move() -> None:
    layout = Layout.new(2)
    layout.members(["a", "b"])
    layout.push("a", 1, only=0)

    with pytest.raises(ValueError, match="different pushes of the open sync step"):
        recut(layout.states(), protos(3), 1)


def test_lazy_adam_tables_whose_shards_stepped_differently_refuse_the_move() -> None:
    layout = Layout.new(2, mode="async", sparse=LAZY_ADAM)
    layout.members(["a"])
    layout.push("a", 1, {0: rows(1, [0, 2, 4])})  # shard 0's ids alone

    with pytest.raises(ValueError, match=r"table 'fixed'.*step count"):
        recut(layout.states(), protos(3, mode="async", sparse=LAZY_ADAM), 1)


def test_a_switch_not_on_every_shard_refuses_the_move() -> None:
    layout = Layout.new(2)
    layout.jobs[0].set_consistency("async", 0, 0, 1)

    with pytest.raises(ValueError, match="disagree"):
        recut(layout.states(), protos(3), 1)


def test_an_evicting_table_whose_shards_aged_differently_refuses_the_move() -> None:
    settings = {"mode": "async", "sparse": ADAGRAD, "evict_after": 1000}
    layout = Layout.new(2, **settings)
    layout.members(["a"])
    ids = torch.tensor(DYNAMIC_IDS)
    for _ in range(2):
        layout.lookup(1, ids)
    first = ids[layout.owner(1, ids) == 0][:1]
    layout.push("a", 1, {1: rows(1, first.tolist())})  # an apply on shard 0's table alone

    with pytest.raises(ValueError, match=r"table 'dynamic'.*apply counts"):
        recut(layout.states(), protos(3, **settings), 1)  # type: ignore[arg-type]
