"""A worker fetches uploaded arrays by partition: the header, then only the byte ranges of
the rows its lease covers (FetchBlob with an offset and a length), from a real coordinator;
it keeps the partitions it fetched while they fit in its cache, and fetches each only once."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
import torch

from pscluster.data.dataset import Dataset
from pscluster.data.partitions import batches
from pscluster.data.sources.arrays import UploadedSource
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.worker.uploaded import LeasedRows, LeasedUpload, RemoteBlob, open_uploaded
from tests.coordinator.conftest import RPC_TIMEOUT, Running, Shards, submit
from tests.support import rpc_failure, tiny_job

ROWS, PARTITIONS, SEED = 300, 3, 7
NO_CACHE = 0


def test_a_lease_fetches_its_partitions_rows_only(
    shards: Shards, make_coordinator: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    job = tiny_job(train_rows=ROWS, partitions=PARTITIONS, seed=SEED)
    job_id = submit(running.stub, job).job_id
    given = Dataset.from_blob(job.blobs["dataset"])  # the rows as the user gave them
    fetched: list[int] = []
    read = RemoteBlob.read

    def counted(self: RemoteBlob, offset: int, length: int) -> bytearray:
        fetched.append(length)
        return read(self, offset, length)

    monkeypatch.setattr(RemoteBlob, "read", counted)
    source = open_uploaded(running.stub, job_id, RPC_TIMEOUT, SEED, NO_CACHE)
    assert isinstance(source, LeasedUpload)
    train = source.open("train")
    assert isinstance(train, LeasedRows) and len(train) == ROWS

    # Execute: the batches of partition 1, epoch 2, as a lease reads them.
    fetched.clear()
    train.prepare(PARTITIONS, 1)
    plan = batches(ROWS, PARTITIONS, 1, 2, 16, SEED)
    read_batches = [train.__getitems__(b.tolist()) for b in plan]

    # Assert: 100 rows of x (4 float32) and y (int64) were fetched, and nothing else.
    assert sorted(fetched) == [100 * 8, 100 * 16]
    for b, got in zip(plan, read_batches, strict=True):
        index = torch.from_numpy(b)
        assert isinstance(got.x, torch.Tensor)
        assert torch.equal(got.x, given.train_x[index])  # type: ignore[index]
        assert torch.equal(got.y, given.train_y[index])
    # A row of another partition is not held: reading it is an error, not a wrong row.
    other = batches(ROWS, PARTITIONS, 0, 2, 16, SEED)[0]
    with pytest.raises(Exception, match="not all in the partition held"):
        train.__getitems__(other.tolist())


# A partition of 100 rows: x is 4 float32 a row, y one int64 (24 bytes a row)
PARTITION_BYTES = 100 * 24


@pytest.mark.parametrize(
    ("cache_bytes", "fetches", "held"),
    [
        (ROWS * 24, 3, [0, 1, 2]),  # every partition fits: each fetched once, over 3 epochs
        (2 * PARTITION_BYTES, 9, [1, 2]),  # two fit: leased in turn, each was dropped before
        (NO_CACHE, 9, []),  # none kept (the lease's own is held while it is read)
    ],
)
def test_partitions_fetched_are_kept_while_they_fit(
    shards: Shards,
    make_coordinator: Callable[..., Running],
    cache_bytes: int,
    fetches: int,
    held: list[int],
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    job = tiny_job(train_rows=ROWS, partitions=PARTITIONS, seed=SEED)
    job_id = submit(running.stub, job).job_id
    given = Dataset.from_blob(job.blobs["dataset"])
    source = open_uploaded(running.stub, job_id, RPC_TIMEOUT, SEED, cache_bytes)
    assert isinstance(source, LeasedUpload)
    train = source.open("train")
    assert isinstance(train, LeasedRows)

    # Execute: three epochs of the three partitions' leases, reading every batch
    for epoch in range(3):
        for partition in range(PARTITIONS):
            train.prepare(PARTITIONS, partition)
            for b in batches(ROWS, PARTITIONS, partition, epoch, 16, SEED):
                got = train.__getitems__(b.tolist())
                assert torch.equal(got.y, given.train_y[torch.from_numpy(b)])

    # Assert: the rows read were right whichever way they were held
    assert train.fetches == fetches
    assert train.held_bytes == len(held) * PARTITION_BYTES
    # The lease's partition again, or one kept, is read without a fetch
    for partition in [2, *held]:
        train.prepare(PARTITIONS, partition)
        first = batches(ROWS, PARTITIONS, partition, 0, 16, SEED)[0]
        assert torch.equal(train.__getitems__(first.tolist()).y, given.train_y[first])
    assert train.fetches == fetches


def test_a_range_past_the_end_is_out_of_range(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    job = tiny_job()
    job_id = submit(running.stub, job).job_id
    size = len(job.blobs["dataset"])
    ask = co_pb2.FetchBlobRequest(job_id=job_id, blob="dataset", offset=size - 4, length=8)
    code, details = rpc_failure(lambda: list(running.stub.FetchBlob(ask, timeout=RPC_TIMEOUT)))
    assert code == grpc.StatusCode.OUT_OF_RANGE and f"({size} bytes)" in details
    tail = co_pb2.FetchBlobRequest(job_id=job_id, blob="dataset", offset=size - 4, length=4)
    chunks = list(running.stub.FetchBlob(tail, timeout=RPC_TIMEOUT))
    assert b"".join(c.data for c in chunks) == job.blobs["dataset"][-4:]


def test_arrays_uploaded_in_their_given_order_are_fetched_whole(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # What an SDK from before partition order sent: no order in the header.
    running = make_coordinator(shards.addresses)
    job = tiny_job(seed=SEED)
    given = Dataset.from_blob(job.blobs["dataset"])
    job.blobs["dataset"] = Dataset.from_arrays(
        (given.train_x, given.train_y), (given.test_x, given.test_y)
    ).to_blob()
    job_id = submit(running.stub, job).job_id
    source = open_uploaded(running.stub, job_id, RPC_TIMEOUT, SEED, NO_CACHE)
    assert isinstance(source, UploadedSource)
    assert torch.equal(source.data.train_y, given.train_y)
