"""Stragglers through the coordinator's RPCs: progress reports flag a slow worker, an idle
worker takes over the rest of its lease, and status, metrics and Prometheus all say so."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Callable

import grpc
import pytest

from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import RPC_TIMEOUT, HandWorker, Running, Shards, submit
from tests.support import tiny_job


def report(
    worker: HandWorker, task: co_pb2.Task, position: int, batches: int, seconds: float
) -> co_pb2.ReportProgressReply:
    lease = co_pb2.LeaseProgress(
        lease_id=task.lease_id,
        position=position,
        batches=batches,
        busy_seconds=batches * seconds,
        step_seconds=batches * seconds,
    )
    return worker.stub.ReportProgress(
        co_pb2.ReportProgressRequest(worker_id=worker.worker_id, job_id=task.job_id, lease=lease),
        timeout=RPC_TIMEOUT,
    )


def test_a_stragglers_lease_is_split_for_an_idle_worker(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: two partitions of 20 batches, leased to a fast and a slow worker.
    running = make_coordinator(shards.addresses, metrics_port=0)
    info = submit(running.stub, tiny_job(partitions=2, train_rows=160))
    fast = HandWorker(running.stub, shards, worker_id="fast")
    slow = HandWorker(running.stub, shards, worker_id="slow")
    fast_task, slow_task = fast.acquire(), slow.acquire()
    assert (slow_task.first_batch, slow_task.end_batch) == (0, 20)
    report(fast, fast_task, position=12, batches=12, seconds=0.01)
    report(slow, slow_task, position=10, batches=10, seconds=0.1)

    # Execute: a third worker finds nothing free.
    idle = HandWorker(running.stub, shards, worker_id="idle")
    taken = idle.acquire()
    reply = report(slow, slow_task, position=11, batches=1, seconds=0.1)

    # Assert: it gets the straggler's remaining batches after what the straggler reaches in
    # one report interval (0.5 s at 100 ms a batch); the straggler hears its new end.
    assert taken.kind == co_pb2.TASK_KIND_TRAIN
    assert (taken.partition, taken.first_batch, taken.end_batch) == (
        slow_task.partition,
        16,
        20,
    )
    assert reply.end_batch == 16
    metrics = running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=info.job_id), timeout=30)
    speeds = {w.worker_id: w for w in metrics.workers}
    assert speeds["slow"].straggler and speeds["slow"].slowdown == pytest.approx(10.0)
    assert not speeds["fast"].straggler
    assert [e.kind for e in metrics.events] == ["straggler", "split"]
    assert "go to worker idle" in metrics.events[1].message
    status = running.stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
    flags = {w.worker_id: (w.straggler, w.task) for w in status.workers}
    assert flags["slow"] == (True, f"train e0/p{slow_task.partition} b0-16")
    port = running.handle.metrics.port  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert f'pscluster_job_stragglers{{job_id="{info.job_id}"}} 1.0' in text
    assert f'pscluster_worker_straggler{{job_id="{info.job_id}",worker_id="slow"}} 1.0' in text


@pytest.mark.parametrize(
    ("busy", "batches", "message"),
    [
        (math.nan, 1, "lease.busy_seconds=nan is invalid"),
        (-1.0, 1, "lease.busy_seconds=-1.0 is invalid"),
        (1.0, 1 << 21, "lease.batches=2097152 is implausible"),
    ],
)
def test_a_bad_progress_report_is_refused_and_records_nothing(
    shards: Shards,
    make_coordinator: Callable[..., Running],
    busy: float,
    batches: int,
    message: str,
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job())
    worker = HandWorker(running.stub, shards)
    task = worker.acquire()
    bad = co_pb2.LeaseProgress(lease_id=task.lease_id, position=1, batches=batches)
    bad.busy_seconds = busy
    request = co_pb2.ReportProgressRequest(
        worker_id=worker.worker_id,
        job_id=info.job_id,
        steps=[co_pb2.StepMetric(loss=0.5, samples=4, epoch=0)],
        lease=bad,
    )
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.ReportProgress(request, timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    metrics = running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=info.job_id), timeout=30)
    assert (len(metrics.steps), len(metrics.workers)) == (0, 0)
