"""Sync mode with one worker and plain SGD is single-process PyTorch, to float tolerance.

This is the proof that range sharding, chunked transfer, the flat layout and the server-side
optimizer are exact: any off-by-one in a range, a dropped chunk or a reordered parameter
would show up as a mismatch. The worker here overlaps its communication with its compute
(PSC_OVERLAP=on: buckets pushed during backward, forward beside the pull), so a bucket put
in the wrong place or a parameter read before it arrived would show up too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from pscluster.client.local import LocalCluster
from pscluster.data.partitions import batches
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits, digits_images
from tests.e2e.models import DigitsMLP
from tests.e2e.reference import train_one_process
from tests.e2e.user_models import DigitsCNN

pytestmark = pytest.mark.slow

SEED, EPOCHS, BATCH, LR, PARTITIONS = 7, 2, 32, 0.1, 3


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # 3 shards, so that ranges cut through the middle of layers; the worker overlaps its
    # pushes with backward and its pulls with forward (off by default on CPUs), so that
    # this proof covers that path too (the other e2e tests take the serial one).
    overlap = {"PSC_OVERLAP": "on", "PSC_OVERLAP_BUCKET_BYTES": "4096"}  # a few per range
    c = start_cluster(tmp_path_factory.mktemp("exact"), shards=3, workers=1, **overlap)
    try:
        yield c
    finally:
        c.stop()


def single_process(train: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = DigitsMLP()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = train
    # One worker leases the partitions in order, epoch after epoch.
    for epoch in range(EPOCHS):
        for partition in range(PARTITIONS):
            for idx in batches(len(x), PARTITIONS, partition, epoch, BATCH, SEED):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
                opt.step()
    return model.state_dict()


def test_sync_one_worker_equals_single_process_sgd(
    one_worker: LocalCluster, tmp_path: Path
) -> None:
    # Prepare
    train, test = digits()
    xt, yt = torch.from_numpy(train[0]), torch.from_numpy(train[1])

    # Execute
    with one_worker.client() as client:
        job = client.submit(
            model=DigitsMLP,
            train=train,
            test=test,
            mode="sync",
            optimizer={"name": "sgd", "lr": LR},
            epochs=EPOCHS,
            batch_size=BATCH,
            partitions=PARTITIONS,
            seed=SEED,
        )
        info = job.wait(timeout=300)
        remote = job.fetch_model()
    local = single_process((xt, yt))

    # Assert
    assert info.state == "completed"
    assert remote.keys() == local.keys()
    for name, value in local.items():
        torch.testing.assert_close(remote[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_sync_one_worker_batchnorm_parameters_and_buffers_are_bit_exact(
    one_worker: LocalCluster,
) -> None:
    # Prepare: BatchNorm's running statistics and batch counters train on the shards.
    train, test = digits_images()
    local = train_one_process(
        DigitsCNN,
        train,
        epochs=EPOCHS,
        batch_size=BATCH,
        partitions=PARTITIONS,
        seed=SEED,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9),
    )

    # Execute
    with one_worker.client() as client:
        job = client.submit(
            model=DigitsCNN,
            train=train,
            test=test,
            mode="sync",
            optimizer={"name": "sgd", "lr": LR, "momentum": 0.9},
            epochs=EPOCHS,
            batch_size=BATCH,
            partitions=PARTITIONS,
            seed=SEED,
        )
        info = job.wait(timeout=300)
        remote = job.fetch_model()

    # Assert: every entry equal bit for bit, buffers included.
    assert info.state == "completed"
    expected = local.state_dict()
    assert remote.keys() == expected.keys()
    for name, value in expected.items():
        assert remote[name].dtype == value.dtype, name
        assert torch.equal(remote[name], value), name
