"""Bad input gets the right status, a message saying what to fix, and changes nothing; jobs
end by cancellation or a worker's failure report."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest

from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import (
    RPC_TIMEOUT,
    HandWorker,
    Running,
    Shards,
    fetch_model,
    get_job,
    submit,
    wait_for_job,
)
from tests.support import TinyJob, rpc_code, rpc_failure, tiny_job


def _bad_jobs() -> Iterator[tuple[str, TinyJob, str]]:
    job = tiny_job()
    job.spec.optimizer.lr = -1.0
    yield "lr", job, "optimizer.lr must be > 0"
    job = tiny_job()
    job.spec.model.params[0].shape[:] = [4, 3]
    yield (
        "shape",
        job,
        r"'fc.weight' as torch.float32 of shape \[3, 4\]; the spec says "
        r"torch.float32 of shape \[4, 3\]",
    )
    job = tiny_job()
    del job.blobs["initial_state"]
    yield "missing blob", job, r"\['initial_state'\] missing"
    job = tiny_job()
    job.blobs["extra"] = b"1"
    yield "unknown blob", job, "blob 'extra' is unknown"
    job = tiny_job()
    job.spec.shards = 5
    yield "shards", job, r"shards=5 is out of range; expected 0..2"


@pytest.mark.parametrize(
    ("what", "job", "message"), list(_bad_jobs()), ids=[what for what, _, _ in _bad_jobs()]
)
def test_a_bad_submission_is_refused_and_stores_nothing(
    shards: Shards,
    make_coordinator: Callable[..., Running],
    tmp_path: Path,
    what: str,
    job: TinyJob,
    message: str,
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    # Execute
    code, details = rpc_failure(lambda: submit(running.stub, job))
    # Assert
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, details), details
    listed = running.stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT)
    assert list(listed.jobs) == []
    jobs_dir = tmp_path / "state" / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


def test_unknown_ids_are_not_found_everywhere(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    stub = make_coordinator(shards.addresses).stub
    ask = co_pb2.GetJobRequest(job_id="j-00000000")
    calls: dict[str, Callable[[], object]] = {
        "GetJob": lambda: stub.GetJob(ask, timeout=RPC_TIMEOUT),
        "CancelJob": lambda: stub.CancelJob(ask, timeout=RPC_TIMEOUT),
        "GetMetrics": lambda: stub.GetMetrics(ask, timeout=RPC_TIMEOUT),
        "GetJobPlan": lambda: stub.GetJobPlan(ask, timeout=RPC_TIMEOUT),
        "FetchModel": lambda: list(stub.FetchModel(ask, timeout=RPC_TIMEOUT)),
        "FetchBlob": lambda: list(
            stub.FetchBlob(
                co_pb2.FetchBlobRequest(job_id="j-00000000", blob="dataset"), timeout=RPC_TIMEOUT
            )
        ),
        "AcquireTask": lambda: stub.AcquireTask(
            co_pb2.AcquireTaskRequest(worker_id="w-ghost"), timeout=RPC_TIMEOUT
        ),
        "CompleteTask": lambda: stub.CompleteTask(
            co_pb2.CompleteTaskRequest(worker_id="w-ghost", lease_id="l-1"), timeout=RPC_TIMEOUT
        ),
        "ReportFailure": lambda: stub.ReportFailure(
            co_pb2.ReportFailureRequest(worker_id="w", job_id="j-00000000", error="boom"),
            timeout=RPC_TIMEOUT,
        ),
        "DescribeData": lambda: stub.DescribeData(
            co_pb2.DescribeDataRequest(
                worker_id="w",
                job_id="j-00000000",
                shape=co_pb2.DataShape(train_rows=1, test_rows=1, block_rows=1),
            ),
            timeout=RPC_TIMEOUT,
        ),
    }
    codes = {name: rpc_code(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.NOT_FOUND)
    beat = stub.Heartbeat(co_pb2.HeartbeatRequest(worker_id="w-ghost"), timeout=RPC_TIMEOUT)
    assert not beat.known
    empty = rpc_code(lambda: stub.GetJob(co_pb2.GetJobRequest(), timeout=RPC_TIMEOUT))
    assert empty == grpc.StatusCode.INVALID_ARGUMENT


def test_worker_side_mistakes(shards: Shards, make_coordinator: Callable[..., Running]) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job(epochs=1, partitions=1))
    worker = HandWorker(running.stub, shards)
    # An unknown lease of a known worker: the work is to be discarded.
    code, details = rpc_failure(lambda: worker.complete(co_pb2.Task(lease_id="l-nope")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "lease l-nope is no longer valid" in details
    # Progress for an epoch the job does not have changes nothing.
    assert rpc_code(lambda: worker.report(info.job_id, 5, [1.0])) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert get_job(running.stub, info.job_id).steps == 0
    # An evaluation with an impossible accuracy keeps the lease.
    worker.complete(worker.acquire())
    evaluation = worker.acquire()
    assert evaluation.kind == co_pb2.TASK_KIND_EVAL
    assert rpc_code(lambda: worker.complete(evaluation, accuracy=1.5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert get_job(running.stub, info.job_id).state == "running"
    worker.complete(evaluation, accuracy=0.75)
    wait_for_job(running.stub, info.job_id, "completed")
    # The trained model comes from FetchModel, not FetchBlob.
    model_blob = co_pb2.FetchBlobRequest(job_id=info.job_id, blob="model")
    code, details = rpc_failure(
        lambda: list(running.stub.FetchBlob(model_blob, timeout=RPC_TIMEOUT))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "FetchModel" in details
    bad_id = rpc_code(lambda: HandWorker(running.stub, shards, worker_id="../etc"))
    assert bad_id == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_revokes_leases_and_frees_the_shards(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job())
    worker = HandWorker(running.stub, shards)
    task = worker.acquire()
    assert task.kind == co_pb2.TASK_KIND_TRAIN
    # Execute
    cancelled = running.stub.CancelJob(
        co_pb2.GetJobRequest(job_id=info.job_id), timeout=RPC_TIMEOUT
    )
    # Assert
    assert (cancelled.state, list(cancelled.workers)) == ("cancelled", [])
    assert list(worker.heartbeat().revoked_leases) == [task.lease_id]
    code, details = rpc_failure(lambda: worker.complete(task))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "job cancelled" in details
    again = rpc_code(
        lambda: running.stub.CancelJob(
            co_pb2.GetJobRequest(job_id=info.job_id), timeout=RPC_TIMEOUT
        )
    )
    assert again == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_code(lambda: fetch_model(running.stub, info.job_id)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert rpc_code(lambda: worker.report(info.job_id, 0, [1.0])) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    for address in shards.addresses:
        assert rpc_code(partial(shards.stats, address, info.job_id)) == (grpc.StatusCode.NOT_FOUND)
    assert worker.acquire().kind == co_pb2.TASK_KIND_WAIT


def test_a_reported_failure_fails_the_job_once(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job())
    worker = HandWorker(running.stub, shards)
    task = worker.acquire()
    traceback = 'Traceback (most recent call last):\n  File "<model>"\nNameError: name "x"'

    def report(error: str) -> None:
        running.stub.ReportFailure(
            co_pb2.ReportFailureRequest(
                worker_id=worker.worker_id, job_id=info.job_id, error=error
            ),
            timeout=RPC_TIMEOUT,
        )

    assert rpc_code(lambda: report("  ")) == grpc.StatusCode.INVALID_ARGUMENT
    assert get_job(running.stub, info.job_id).state == "running"
    report(traceback)
    report("a second report changes nothing")
    failed = get_job(running.stub, info.job_id)
    assert (failed.state, failed.error) == ("failed", traceback)
    assert 'NameError: name "x"' in failed.status_message
    assert list(worker.heartbeat().revoked_leases) == [task.lease_id]
    assert rpc_code(lambda: fetch_model(running.stub, info.job_id)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    # A failed job's blobs are still served (to reproduce the failure).
    chunks: list[common_pb2.BlobChunk] = list(
        running.stub.FetchBlob(
            co_pb2.FetchBlobRequest(job_id=info.job_id, blob="initial_state"),
            timeout=RPC_TIMEOUT,
        )
    )
    assert {c.blob for c in chunks} == {"initial_state"}
    assert b"".join(c.data for c in chunks) == tiny_job().blobs["initial_state"]
