"""Shards added and removed while a job trains: a cluster of registering shards goes from 2 to
3 and back to 2 under a running job (``client.scale_shards`` and ``pscluster scale-shards``),
which keeps every acknowledged update (async: each shard's version equals the steps the
workers reported, so none is lost or applied twice) and reaches its target; one worker in sync
moved twice mid-job ends bit for bit where one process does. A new shard that dies before it
adopts its part, or an old one down as the move begins, leaves the job where it was, training
on (the old one comes back from its log, and the move is made again). A shard killed in the
middle of taking its part is tests/server/test_staged_adoption.py's."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.errors import PSClusterError
from pscluster.client.job import Job
from pscluster.client.local import LocalCluster
from pscluster.client.sdk import Client
from tests.e2e.conftest import FAST
from tests.e2e.data import digits, digits_images
from tests.e2e.models import DigitsMLP
from tests.e2e.reference import train_one_process
from tests.e2e.user_models import DigitsCNN
from tests.faults.harness import lost_updates, raw_metrics
from tests.support import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        shards=2,
        workers=2,
        state_dir=tmp_path,
        env={**FAST, "PSC_SHARD_TIMEOUT_SECONDS": "3"},
        register_shards=True,
    )
    with c:
        yield c


def submit(client: Client, epochs: int) -> Job:
    train, test = digits()
    return client.submit(
        model=DigitsMLP,
        train=train,
        test=test,
        mode="async",
        epochs=epochs,
        batch_size=32,
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
    )


def steps_past(job: Job, steps: int) -> None:
    wait_for(lambda: job.info().steps >= steps, 120, what=f"job {job.id} past step {steps}")


def test_a_job_moves_from_2_to_3_to_2_shards_and_loses_nothing(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        # Prepare
        job = submit(client, epochs=60)
        steps_past(job, 100)
        cluster.add_shard()

        # Execute: grow with the SDK, shrink with the CLI
        grown = client.scale_shards(3)
        steps_past(job, job.info().steps + 300)
        shrunk = CliRunner().invoke(
            app, ["scale-shards", "2", "-a", cluster.address], env={"COLUMNS": "200"}
        )
        info = job.wait(timeout=300)
        events = [e.message for e in job.metrics().events if e.kind == "layout"]
    counts = lost_updates(info, list(raw_metrics(cluster.address, job.id).shards))

    # Assert
    assert grown.shard_ids == ("shard-0", "shard-1", "shard-2")
    (move,) = grown.jobs
    assert move.moved, move.reason
    # (a job starts at layout generation 1, so that a worker's 0 never means "unchecked")
    assert move.shard_ids == ("shard-0", "shard-1", "shard-2") and move.layout_generation == 2
    assert move.state_bytes > 0 and move.pause_seconds < 5
    assert shrunk.exit_code == 0, shrunk.output
    assert "shard-0, shard-1" in shrunk.output and job.id in shrunk.output
    assert info.state == "completed", info.error
    assert info.test_accuracy is not None and info.test_accuracy >= 0.95
    assert counts == {"lost": 0, "unreported": 0}, (counts, info.steps)
    assert len(events) == 2 and "from 2 to 3 shard(s)" in events[0], events
    assert "from 3 to 2 shard(s)" in events[1], events


def test_a_shard_dead_before_it_adopts_leaves_the_job_where_it_was(
    cluster: LocalCluster,
) -> None:
    with cluster.client() as client:
        # Prepare: the new shard registers, then dies (still listed live for a few seconds)
        job = submit(client, epochs=30)
        steps_past(job, 50)
        cluster.kill(cluster.add_shard(), signal.SIGKILL)

        # Execute
        result = client.scale_shards(3)
        info = job.wait(timeout=300)
    counts = lost_updates(info, list(raw_metrics(cluster.address, job.id).shards))

    # Assert: it stayed on its two shards, said why, and trained on with nothing lost
    (move,) = result.jobs
    assert not move.moved and "shard" in move.reason, move
    assert move.shard_ids == ("shard-0", "shard-1")
    assert info.state == "completed", info.error
    assert counts == {"lost": 0, "unreported": 0}, (counts, info.steps)


def test_scaling_needs_live_shards(cluster: LocalCluster) -> None:
    with cluster.client() as client, pytest.raises(PSClusterError) as caught:
        client.scale_shards(3)
    same = CliRunner().invoke(app, ["scale-shards", "2", "-a", cluster.address])

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "only 2 registered shard(s) are live" in str(caught.value)
    assert same.exit_code == 0, same.output
    assert "no running job to move" in same.output


def test_sync_one_worker_moved_twice_is_bit_exact_to_one_process(tmp_path: Path) -> None:
    # Prepare: BatchNorm statistics and Adam's moments and step count live on the shards, so
    # anything a move dropped or cut wrong (an offset, a moment, the step) shows in the bits.
    seed, epochs, batch, partitions = 7, 8, 32, 3
    train, test = digits_images()
    local = train_one_process(
        DigitsCNN,
        train,
        epochs=epochs,
        batch_size=batch,
        partitions=partitions,
        seed=seed,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    # The worker streams its push during backward (4 KB buckets), so that the stream cut by
    # the old ranges must give way to one cut by the new.
    overlap = {"PSC_OVERLAP": "on", "PSC_OVERLAP_BUCKET_BYTES": "4096"}
    cluster = LocalCluster(
        shards=2, workers=1, state_dir=tmp_path, env={**FAST, **overlap}, register_shards=True
    )
    with cluster, cluster.client() as client:
        cluster.add_shard()
        job = client.submit(
            model=DigitsCNN,
            train=train,
            test=test,
            mode="sync",
            optimizer={"name": "adam", "lr": 1e-3},
            epochs=epochs,
            batch_size=batch,
            partitions=partitions,
            seed=seed,
            shards=2,
        )

        # Execute: 2 -> 3 shards, then 3 -> 2, mid-job
        steps_past(job, 20)
        moves = [client.scale_shards(3), client.scale_shards(2)]
        info = job.wait(timeout=300)
        remote = job.fetch_model()

    # Assert
    assert [m.jobs[0].moved for m in moves] == [True, True], moves
    assert info.state == "completed", info.error
    assert info.steps > 20 + 10, "the job must still have been training after the moves"
    expected = local.state_dict()
    assert remote.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(remote[name], value), name


def test_an_old_shard_down_at_a_move_rolls_it_back_and_a_later_move_completes(
    cluster: LocalCluster,
) -> None:
    with cluster.client() as client:
        # Prepare: an old shard is SIGKILLed as the move begins (still listed live)
        job = submit(client, epochs=40)
        steps_past(job, 50)
        cluster.add_shard()
        old = cluster.shard_handles[1]
        cluster.kill(old, signal.SIGKILL)

        # Execute: the move, then the shard back from its log, then the move again
        rolled_back = client.scale_shards(3)
        cluster.restart(old)
        steps_past(job, job.info().steps + 50)
        completed = client.scale_shards(3)
        info = job.wait(timeout=300)
    counts = lost_updates(info, list(raw_metrics(cluster.address, job.id).shards))

    # Assert: the first move rolled back naming the dead shard, the second one moved
    (first,) = rolled_back.jobs
    assert not first.moved and str(old.address) in first.reason, first
    (second,) = completed.jobs
    assert second.moved, second.reason
    assert info.state == "completed", info.error
    assert counts == {"lost": 0, "unreported": 0}, (counts, info.steps)
