"""Embedding tables on shards added and removed under a running job: every row, its optimizer
state and a dynamic table's admitted ids move to their new owners, read shard to shard. One
worker in sync moved 2 -> 3 -> 2 ends where single-process torch does; a dynamic table keeps
every admitted id through a move of two workers in sync, and the fetched model scores what the
job reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pscluster.client.local import LocalCluster
from tests.e2e.conftest import FAST
from tests.e2e.test_scale_shards import steps_past
from tests.e2e.test_sparse_tables import (
    exact_reference,
    hashed_ids,
    recommender_auc,
    submit_exact,
    submit_recommender,
)

pytestmark = pytest.mark.slow


def registering(tmp_path: Path, workers: int) -> LocalCluster:
    """Two registering shards and a third started, so that the job can move to it."""
    return LocalCluster(
        shards=2, workers=workers, state_dir=tmp_path, env=FAST, register_shards=True
    )


def test_one_worker_in_sync_moved_twice_keeps_every_row_exactly(tmp_path: Path) -> None:
    # Prepare: adagrad's accumulators live beside the rows, so a row moved without them, or
    # to the wrong owner, shows in the trained tables.
    epochs = 20
    initial, expected = exact_reference(lambda p: torch.optim.Adagrad(p, lr=0.1), epochs)
    cluster = registering(tmp_path, workers=1)
    with cluster, cluster.client() as client:
        cluster.add_shard()
        job = submit_exact(client, {"name": "adagrad", "lr": 0.1}, initial, epochs, shards=2)

        # Execute: 2 -> 3 shards, then 3 -> 2, mid-job
        steps_past(job, 15)
        moves = [client.scale_shards(3), client.scale_shards(2)]
        info = job.wait(timeout=300)
        remote = job.fetch_model()

    # Assert
    assert [m.jobs[0].moved for m in moves] == [True, True], moves
    # 2 -> 3 moves two thirds of the rows (weights and adagrad sums) off their shard: more
    # than the items table's weights alone (997 x 8 float32), counted by the shards that read
    # them.
    assert moves[0].jobs[0].state_bytes > 997 * 8 * 4, moves[0]
    assert info.state == "completed", info.error
    assert info.steps > 15 + 10, "the job must still have been training after the moves"
    assert remote.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(remote[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_dynamic_table_keeps_its_admitted_ids_across_a_move(tmp_path: Path) -> None:
    # Prepare: 300 hashed ids, the label planted on the first id's parity (as in
    # test_sparse_tables); admitted at their second lookup. Two workers in sync: a step is
    # often open at the move (one worker pushed, the other not), and its summed gradient
    # and row gradients move with it.
    items, y = hashed_ids()
    cluster = registering(tmp_path, workers=2)
    with cluster, cluster.client() as client:
        cluster.add_shard()
        job = submit_recommender(client, items, y, mode="sync", epochs=6, shards=2)

        # Execute: 2 -> 3 once every id has been seen twice (admitted)
        steps_past(job, 40)
        moved = client.scale_shards(3)
        info = job.wait(timeout=300)
        state = job.fetch_model()
        (table,) = job.metrics().tables

    # Assert: the ids admitted before the move are still there, counted once, and the
    # fetched model scores what the job reported.
    assert moved.jobs[0].moved, moved
    assert info.state == "completed", info.error
    assert table.admitted == state["items.ids"].numel() == 300 == table.rows
    _, auc = recommender_auc(state, items[1500:], y[1500:])
    assert info.metric_value == pytest.approx(auc, abs=1e-6)
    assert auc > 0.7
