"""Jobs whose workers read the data where it lives (a data source), on a real local cluster.

What must hold: a source trains exactly what uploaded arrays train (bit for bit, sync with one
worker); a source that fails fails the job fast with the worker's message.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pscluster.client.errors import InvalidJobError, JobFailed
from pscluster.client.local import LocalCluster
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits_images
from tests.e2e.reference import train_one_process
from tests.e2e.user_data import make_broken, make_digits, make_from_folder
from tests.e2e.user_models import DigitsCNN
from tests.support import wait_for

SEED, EPOCHS, BATCH, LR, PARTITIONS = 7, 2, 32, 0.1, 3


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("sources"), shards=2, workers=1)
    try:
        yield c
    finally:
        c.stop()


JOB: dict[str, Any] = {
    "model": DigitsCNN,
    "mode": "sync",
    "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9},
    "epochs": EPOCHS,
    "batch_size": BATCH,
    "partitions": PARTITIONS,
    "seed": SEED,
}


def trained(cluster: LocalCluster, **data: Any) -> dict[str, torch.Tensor]:
    """The fetched model of the sync job on ``data`` (one worker)."""
    with cluster.client() as client:
        job = client.submit(**JOB, **data)
        info = job.wait(timeout=300)
        assert info.state == "completed", info.error
        return job.fetch_model()


@pytest.fixture(scope="module")
def uploaded(one_worker: LocalCluster) -> dict[str, torch.Tensor]:
    """The model the job trains on the same digits uploaded as arrays."""
    train, test = digits_images()
    return trained(one_worker, train=train, test=test)


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_a_data_source_trains_bit_for_bit_what_uploaded_arrays_train(
    one_worker: LocalCluster, uploaded: dict[str, torch.Tensor], loader_workers: int
) -> None:
    # Execute: the same digits, read by the user's dataset one sample at a time on the
    # worker (in the trainer, or in 2 loader processes).
    remote = trained(one_worker, data=make_digits, loader_workers=loader_workers)

    # Assert: parameters and BatchNorm buffers equal bit for bit, to the uploaded job's and
    # to the same training in one process.
    train, _ = digits_images()
    local = train_one_process(
        DigitsCNN,
        train,
        epochs=EPOCHS,
        batch_size=BATCH,
        partitions=PARTITIONS,
        seed=SEED,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9),
    ).state_dict()
    assert remote.keys() == uploaded.keys() == local.keys()
    for name, value in remote.items():
        assert torch.equal(value, uploaded[name]), name
        assert torch.equal(value, local[name]), name


def test_a_source_failing_on_the_workers_fails_the_job_with_their_message(
    one_worker: LocalCluster,
) -> None:
    # The folder is missing here too, so the SDK leaves it to the workers (where it is
    # missing as well): the job fails at once, with the worker's message and traceback.
    with one_worker.client() as client:
        job = client.submit(
            model=DigitsCNN,
            data=make_from_folder,
            data_args={"root": "/nonexistent/digits"},
            epochs=1,
        )
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=60)
    info = failed.value.info
    assert info.state == "failed"
    assert "tests/e2e/user_data.py" in info.error  # the user's file and line
    assert info.status_message.endswith(
        "raised FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/digits/READY'"
    )


def test_a_source_that_raises_is_refused_at_submit(one_worker: LocalCluster) -> None:
    with one_worker.client() as client, pytest.raises(InvalidJobError, match="index is corrupt"):
        client.submit(model=DigitsCNN, data=make_broken, epochs=1)


def test_a_worker_killed_mid_partition_has_its_partition_read_again(tmp_path: Path) -> None:
    # Prepare: the user's dataset, with per-sample augmentation, read by 3 workers.
    cluster = start_cluster(tmp_path, shards=2, workers=3)
    try:
        with cluster.client() as client:
            job = client.submit(
                model=DigitsCNN,
                data=make_digits,
                data_args={"noise": 0.05},
                mode="async",
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                epochs=10,
                batch_size=32,
                partitions=6,
                seed=SEED,
            )
            wait_for(lambda: job.info().steps >= 30, 120, what="30 steps", poll=0.2)

            # Execute: a crash in the middle of a lease; it expires and is leased again.
            cluster.kill_worker(0, signal.SIGKILL)
            info = job.wait(timeout=300)
            metrics = job.metrics()
    finally:
        cluster.stop()

    # Assert: every partition of every epoch was trained (the victim's lease too), to target.
    assert info.state == "completed", info.error
    assert info.test_accuracy is not None and info.test_accuracy >= 0.93
    assert len(metrics.pushes_by_worker) >= 2
    assert info.progress == 1.0
