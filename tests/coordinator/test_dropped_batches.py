"""Batches a worker drops are counted through the coordinator's RPCs: added up by reason in the
job's metrics, and each report an event that names the worker."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import RPC_TIMEOUT, HandWorker, Running, Shards, submit
from tests.support import rpc_failure, tiny_job


def report_dropped(
    worker: HandWorker, task: co_pb2.Task, position: int, dropped: dict[str, int]
) -> None:
    lease = co_pb2.LeaseProgress(
        lease_id=task.lease_id,
        position=position,
        batches=sum(dropped.values()),
        busy_seconds=0.01,
        step_seconds=0.01,
        dropped=dropped,
    )
    worker.stub.ReportProgress(
        co_pb2.ReportProgressRequest(worker_id=worker.worker_id, job_id=task.job_id, lease=lease),
        timeout=RPC_TIMEOUT,
    )


def metrics(running: Running, job_id: str) -> co_pb2.JobMetrics:
    return running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)


def test_dropped_batches_add_up_in_the_metrics_and_each_report_is_an_event(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: a train lease
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job(partitions=1, train_rows=40))
    worker = HandWorker(running.stub, shards, worker_id="w-drop")
    task = worker.acquire()
    assert task.kind == co_pb2.TASK_KIND_TRAIN

    # Execute: two reports, each with batches trained on nothing
    report_dropped(worker, task, position=3, dropped={"stale": 2, "nonfinite": 1})
    report_dropped(worker, task, position=4, dropped={"stale": 1})

    # Assert
    m = metrics(running, info.job_id)
    assert dict(m.batches_dropped) == {"stale": 3, "nonfinite": 1}
    events = [e for e in m.events if e.kind == "batches_dropped"]
    assert [e.worker_id for e in events] == ["w-drop", "w-drop"]
    assert "dropped 3 batch(es)" in events[0].message
    assert "nonfinite 1, stale 2" in events[0].message


def test_a_dropped_reason_that_is_not_a_name_is_refused_and_records_nothing(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job(partitions=1, train_rows=40))
    worker = HandWorker(running.stub, shards)
    task = worker.acquire()

    code, details = rpc_failure(
        lambda: report_dropped(worker, task, position=1, dropped={"no such thing!": 1})
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT and "lease.dropped" in details
    assert dict(metrics(running, info.job_id).batches_dropped) == {}
