"""Batch inference on a real local cluster: what the workers return is what the fetched model
gives locally, in input order, through a worker killed mid-run; what cannot run is refused at
the call; a failure on a worker fails the job at once with its message."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.errors import InvalidJobError, JobFailed
from pscluster.client.local import LocalCluster
from pscluster.client.sdk import Client, Job
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits
from tests.e2e.predict_models import PacedDigits, Picky
from tests.e2e.sparse_models import MeanBag
from tests.support import wait_for

WORKERS = 3
ROWS = 100_000
PAUSE = 0.05  # seconds each forward pass of PacedDigits waits


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One shard and three workers with known ids (pw-0, pw-1, pw-2: the index of each)."""
    c = start_cluster(tmp_path_factory.mktemp("predict"), shards=1, workers=0)
    try:
        for i in range(WORKERS):
            c.add_worker(wait=True, env={"PSC_WORKER_ID": f"pw-{i}"})
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def trained(cluster: LocalCluster) -> str:
    """A completed job of PacedDigits (one epoch of digits: its accuracy does not matter)."""
    train, test = digits()
    with cluster.client() as client:
        job = client.submit(
            model=PacedDigits, model_kwargs={"pause": PAUSE}, train=train, test=test, epochs=1
        )
        job.wait(timeout=180)
        return job.id


def local_model(client: Client, job_id: str) -> PacedDigits:
    """The job's model as a user fetches it, without the pause."""
    model = PacedDigits()
    model.load_state_dict(client.job(job_id).fetch_model())
    return model.eval()


def many_rows(rows: int = ROWS) -> np.ndarray:
    """Digits repeated with noise: ``rows`` rows the model has not seen."""
    (x, _), _ = digits()
    tiled = np.resize(x, (rows, x.shape[1]))
    noise = np.random.default_rng(0).normal(0.0, 0.05, size=tiled.shape)
    return (tiled + noise).astype(np.float32)


def job_count(client: Client) -> int:
    return len(client.jobs())


def freeze_a_holder(cluster: LocalCluster, client: Client) -> tuple[int, str]:
    """Stop (SIGSTOP) a worker that holds a predict lease: (its index, the task it holds).
    Frozen, it cannot hand its partition in, so the job can only complete by scoring that
    partition again elsewhere. A worker caught between two leases is let go and another
    tried."""
    for _ in range(50):
        busy = [w for w in client.status().workers if w.task.startswith("predict")]
        if busy:
            index = int(busy[0].worker_id.removeprefix("pw-"))
            os.kill(cluster.workers[index].pid, signal.SIGSTOP)
            now = {w.worker_id: w.task for w in client.status().workers}
            if now[busy[0].worker_id].startswith("predict"):
                return index, now[busy[0].worker_id]
            os.kill(cluster.workers[index].pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("no worker was seen holding a predict lease")


def test_predictions_equal_the_fetched_models_in_order_with_a_worker_killed(
    cluster: LocalCluster, trained: str
) -> None:
    # Prepare: 20 partitions of 5,000 rows, 10 forward passes of 500 rows each.
    x = many_rows()
    with cluster.client() as client:
        model = local_model(client, trained)
        scoring = client.submit_predict(trained, data=x, partitions=20, batch_size=500)
        wait_for(lambda: scoring.info().progress > 0, 60, what="a first partition scored")

        # Execute: kill a worker in the middle of a partition.
        index, held = freeze_a_holder(cluster, client)
        progress_at_kill = scoring.info().progress
        cluster.kill_worker(index, signal.SIGKILL)
        scoring.wait(timeout=180)
        got = scoring.predictions()
        dead = [w.worker_id for w in client.status().workers if not w.alive]

    # Assert: every row, in order, as the fetched model scores it here; the killed worker's
    # partition was scored again by another.
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    assert 0 < progress_at_kill < 1, "the worker died mid-run"
    assert f"pw-{index}" in dead and held.startswith("predict p")
    assert got.shape == (ROWS, 10) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    cluster.add_worker(wait=True, env={"PSC_WORKER_ID": f"pw-{index}"})  # the others go on


def test_the_cli_writes_probabilities_and_classes_in_input_order(
    cluster: LocalCluster, trained: str, tmp_path: Path
) -> None:
    # Prepare
    x = many_rows(3000)
    np.save(tmp_path / "rows.npy", x)
    runner = CliRunner()

    def cli(to: str, *options: str) -> list[str]:
        rows = str(tmp_path / "rows.npy")
        where = ["--address", cluster.address, "--partitions", "4"]
        return ["predict", trained, rows, "-o", str(tmp_path / to), *options, *where]

    # Execute
    probs = runner.invoke(app, cli("p.npy", "--output", "probs", "--watch"))
    classes = runner.invoke(app, cli("c.npy", "--output", "argmax", "--bf16"))

    # Assert: the probabilities are the fetched model's softmax; bf16 classes mostly agree.
    assert probs.exit_code == 0, probs.output
    assert "wrote probs of shape [3000, 10]" in probs.output
    with cluster.client() as client:
        model = local_model(client, trained)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    got = torch.from_numpy(np.load(tmp_path / "p.npy"))
    torch.testing.assert_close(got, torch.softmax(logits, dim=1), rtol=1e-5, atol=1e-6)
    assert classes.exit_code == 0, classes.output
    argmax = np.load(tmp_path / "c.npy")
    assert argmax.dtype == np.int64 and argmax.shape == (3000,)
    assert (argmax == logits.argmax(dim=1).numpy()).mean() > 0.97


def test_an_uploaded_model_is_scored_as_it_scores_locally(cluster: LocalCluster) -> None:
    # Prepare: a model trained here, never by the cluster.
    torch.manual_seed(3)
    model = PacedDigits(hidden=32).eval()
    x = many_rows(2000)

    # Execute
    with cluster.client() as client:
        got = client.predict(
            model=PacedDigits,
            state=model.state_dict(),
            model_kwargs={"hidden": 32},
            data=x,
            output="argmax",
            timeout=120,
        )

    # Assert
    with torch.no_grad():
        assert torch.equal(got, model(torch.from_numpy(x)).argmax(dim=1))


def test_a_model_with_tables_on_the_shards_scores_with_its_trained_rows(
    cluster: LocalCluster,
) -> None:
    # Prepare: an embedding bag trained on the shards (sparse=True), never held by a worker.
    rng = np.random.default_rng(0)
    ids, y = rng.integers(0, 5000, size=(3000, 6)), rng.integers(0, 3, 3000)
    with cluster.client() as client:
        job = client.submit(
            model=MeanBag,
            train=(ids[:2500], y[:2500]),
            test=(ids[2500:], y[2500:]),
            epochs=1,
            sparse_optimizer={"name": "adagrad", "lr": 0.05},
        )
        job.wait(timeout=120)

        # Execute
        got = job.predict(ids, output="probs", timeout=120)
        model = MeanBag()
        model.load_state_dict(job.fetch_model())

    # Assert
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(ids)), dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_rows_that_do_not_fit_the_model_are_refused_before_anything_is_sent(
    cluster: LocalCluster, trained: str
) -> None:
    with cluster.client() as client:
        before = job_count(client)
        with pytest.raises(InvalidJobError) as refused:
            client.predict(trained, data=np.zeros((50, 32), dtype=np.float32))
        assert job_count(client) == before
    assert "fails on rows" in str(refused.value) and "float32 rows of (32,)" in str(refused.value)


def test_an_unknown_output_is_refused_at_the_call(cluster: LocalCluster, trained: str) -> None:
    with cluster.client() as client:
        before = job_count(client)
        with pytest.raises(InvalidJobError, match="output 'softmax' is unknown"):
            Job(client, trained).predict(many_rows(10), output="softmax")
        assert job_count(client) == before


def test_a_job_without_a_trained_model_is_refused_at_the_call(cluster: LocalCluster) -> None:
    # Prepare: a job that trains for a while.
    train, test = digits()
    with cluster.client() as client:
        running = client.submit(model=PacedDigits, train=train, test=test, epochs=50)
        try:
            before = job_count(client)

            # Execute / Assert
            with pytest.raises(InvalidJobError, match="no trained model yet"):
                running.predict(many_rows(10))
            assert job_count(client) == before
        finally:
            running.cancel()


def test_a_state_that_does_not_load_is_refused_at_the_call(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        before = job_count(client)
        with pytest.raises(InvalidJobError, match="state does not load into PacedDigits"):
            client.predict(model=PacedDigits, state=Picky().state_dict(), data=many_rows(10))
        assert job_count(client) == before


def test_a_model_that_fails_on_a_worker_fails_the_job_at_once_with_its_message(
    cluster: LocalCluster,
) -> None:
    # Prepare: one row in the middle that the model refuses (the dry run tries others).
    x = many_rows(20_000)
    x[10_000, 3] = 1e6
    started = time.monotonic()

    # Execute
    with cluster.client() as client, pytest.raises(JobFailed) as failed:
        client.predict(model=Picky, state=Picky().state_dict(), data=x, timeout=120)
    took = time.monotonic() - started

    # Assert: the worker's message, well before any deadline.
    assert "ValueError: an input is outside [-100, 100]" in str(failed.value)
    assert took < 30
