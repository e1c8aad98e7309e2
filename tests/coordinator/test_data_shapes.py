"""DescribeData: the coordinator learns a data source's sizes from the job's first worker,
sizes leases by them, and fails the job when another worker's source differs."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc

from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import (
    RPC_TIMEOUT,
    HandWorker,
    Running,
    Shards,
    get_job,
    plan_of,
    submit,
)
from tests.support import TinyJob, rpc_failure, tiny_job


def source_job(partitions: int = 3) -> TinyJob:
    """The tiny job reading an .npy folder on its workers instead of uploading its rows."""
    job = tiny_job(partitions=partitions)
    job.spec.data.CopyFrom(
        co_pb2.DataSpec(source="npy", args_json=json.dumps({"path": "/data/tiny"}))
    )
    del job.blobs["dataset"]
    return job


def describe(
    worker: HandWorker, job_id: str, train: int, test: int = 9, block: int = 1
) -> co_pb2.DataShape:
    shape = co_pb2.DataShape(train_rows=train, test_rows=test, block_rows=block)
    request = co_pb2.DescribeDataRequest(job_id=job_id, worker_id=worker.worker_id, shape=shape)
    reply: co_pb2.DataShape = worker.stub.DescribeData(request, timeout=RPC_TIMEOUT)
    return reply


def test_the_first_workers_sizes_are_recorded_and_size_the_leases(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, source_job(partitions=3))
    assert plan_of(running.stub, info.job_id).spec.partitions == 3  # not capped by rows
    first, second = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    lease = first.acquire()
    assert lease.end_batch == 0  # the partition's size is not known yet: all of it
    recorded = describe(first, info.job_id, train=600)
    assert (recorded.train_rows, recorded.test_rows, recorded.block_rows) == (600, 9, 1)
    # The next lease is sized: 200 rows in batches of 4 (the tiny job's) is 50 batches.
    second_lease = second.acquire()
    assert (second_lease.first_batch, second_lease.end_batch) == (0, 50)
    assert describe(second, info.job_id, train=600) == recorded
    assert get_job(running.stub, info.job_id).state == "running"


def test_a_worker_whose_source_differs_fails_the_job_with_both_sizes(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, source_job())
    first, second = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    first.acquire()
    second.acquire()
    describe(first, info.job_id, train=600)
    code, details = rpc_failure(lambda: describe(second, info.job_id, train=590))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    failed = get_job(running.stub, info.job_id)
    assert failed.state == "failed"
    assert f"worker {second.worker_id} 590 train and 9 test rows" in failed.error
    assert "first worker found 600 train and 9 test rows" in failed.error
    assert details == failed.error


def test_too_few_rows_for_the_partitions_fails_the_job(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, source_job(partitions=3))
    worker = HandWorker(running.stub, shards)
    worker.acquire()
    code, _ = rpc_failure(lambda: describe(worker, info.job_id, train=1000, block=500))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    failed = get_job(running.stub, info.job_id)
    assert "too few for the job's 3 partitions" in failed.error


def test_describing_is_for_workers_running_the_job_and_changes_nothing_when_refused(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, source_job())
    uploaded = submit(running.stub, tiny_job())
    worker = HandWorker(running.stub, shards)
    # No lease on the job: refused.
    code, _ = rpc_failure(lambda: describe(worker, info.job_id, train=600))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    worker.acquire()
    code, details = rpc_failure(lambda: describe(worker, info.job_id, train=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be >= 1" in details
    code, details = rpc_failure(lambda: describe(worker, uploaded.job_id, train=24))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "uploaded data" in details
    assert get_job(running.stub, info.job_id).state == "running"
    # A source job has no dataset to fetch.
    ask = co_pb2.FetchBlobRequest(job_id=info.job_id, blob="dataset")
    code, details = rpc_failure(lambda: list(running.stub.FetchBlob(ask, timeout=RPC_TIMEOUT)))
    assert code == grpc.StatusCode.NOT_FOUND and "'npy' source" in details
