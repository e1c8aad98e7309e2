"""Batch inference on a worker-side source, on a real local cluster: the workers read their
partitions' rows from an npy folder (nothing uploaded), and what comes back is, row for row
and in the source's order, what the fetched model gives locally on the same arrays; a source
the model cannot score is refused at the call, before any job exists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pscluster.client.errors import InvalidJobError
from pscluster.client.local import LocalCluster
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits
from tests.e2e.predict_models import PacedDigits

ROWS = 3001  # not a multiple of the partitions: the balanced ranges differ by one row
SHARD_ROWS = 1200  # three npy shards: the partitions cross shard boundaries


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("predict_source"), shards=1, workers=2)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def trained(cluster: LocalCluster) -> str:
    train, test = digits()
    with cluster.client() as client:
        job = client.submit(model=PacedDigits, train=train, test=test, epochs=1)
        job.wait(timeout=180)
        return job.id


def write_npy(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """The npy layout (``<folder>/test/x-00000.npy``, ...), cut into shards of SHARD_ROWS."""
    split = folder / "test"
    split.mkdir(parents=True)
    for i, first in enumerate(range(0, len(x), SHARD_ROWS)):
        np.save(split / f"x-{i:05d}.npy", x[first : first + SHARD_ROWS])
        np.save(split / f"y-{i:05d}.npy", y[first : first + SHARD_ROWS])
    return folder


def test_an_npy_source_is_scored_in_its_row_order(
    cluster: LocalCluster, trained: str, tmp_path: Path
) -> None:
    # Prepare: distinct rows (digits with noise) so that any reordering shows.
    rng = np.random.default_rng(0)
    (xtr, ytr), _ = digits()
    picked = rng.integers(0, len(xtr), ROWS)
    x = (xtr[picked] + rng.normal(0, 0.05, (ROWS, 64))).astype(np.float32)
    folder = write_npy(tmp_path / "rows", x, ytr[picked])

    with cluster.client() as client:
        # Execute
        got = client.predict(
            trained, data="npy", data_args={"path": str(folder)}, partitions=5, batch_size=256
        )
        by_job = client.job(trained).predict("npy", data_args={"path": str(folder)})
        started = client.submit_predict(trained, data="npy", data_args={"path": str(folder)})
        started.wait(timeout=120)
        fetched = started.predictions()
        model = PacedDigits()
        model.load_state_dict(client.job(trained).fetch_model())

    # Assert
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x))
    assert got.shape == (ROWS, 10) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_job, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fetched, expected, rtol=1e-5, atol=1e-5)


def test_a_source_the_model_cannot_score_is_refused_at_the_call(
    cluster: LocalCluster, trained: str, tmp_path: Path
) -> None:
    # Prepare: rows of 32 features for a model of 64.
    folder = write_npy(tmp_path / "narrow", np.zeros((50, 32), np.float32), np.zeros(50, np.int64))

    with cluster.client() as client:
        before = len(client.jobs())

        # Execute / Assert
        with pytest.raises(InvalidJobError, match="fails on rows"):
            client.predict(trained, data="npy", data_args={"path": str(folder)})
        with pytest.raises(InvalidJobError, match="not readable here"):
            client.predict(trained, data="npy", data_args={"path": str(tmp_path / "none")})
        assert len(client.jobs()) == before
