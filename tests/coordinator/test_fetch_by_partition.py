"""A worker fetches uploaded arrays by partition: the header, then only the byte ranges of
the rows its lease covers (FetchBlob with an offset and a length), from a real coordinator."""

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
    source = open_uploaded(running.stub, job_id, RPC_TIMEOUT, SEED)
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
    source = open_uploaded(running.stub, job_id, RPC_TIMEOUT, SEED)
    assert isinstance(source, UploadedSource)
    assert torch.equal(source.data.train_y, given.train_y)
