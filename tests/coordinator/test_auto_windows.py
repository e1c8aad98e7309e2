"""Mode "auto" measures a window's pull and push from the windows the workers counted.

A worker's real progress reporter against a real coordinator: windows of local steps end at
their lease's end, and a report may straddle a switch, so the coordinator cannot take the
windows to be the batches over the local steps in force. The first decision's reason says
the ratio it measured.
"""

from __future__ import annotations

from collections.abc import Callable

from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.worker.progress import ProgressReporter
from tests.coordinator.conftest import HandWorker, Running, Shards, submit
from tests.support import tiny_job


def test_the_first_decision_takes_the_windows_the_worker_counted(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: an auto job (it starts in sync, one batch per push) leased to one worker
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job(mode="auto", partitions=1, train_rows=96))
    worker = HandWorker(running.stub, shards, worker_id="w")
    task = worker.acquire()
    reporter = ProgressReporter(
        running.stub, worker.worker_id, task.job_id, 60.0, task.lease_id, early=True
    )

    # Execute: three windows of four batches each, 20 ms of pull and push per window and
    # 1 ms of compute per batch, then the report
    position = 0
    for _ in range(3):
        position += 4
        for _ in range(4):
            reporter.step(1.0, 8, epoch=0)
        phases = {"pull": 0.01, "push": 0.01, "forward": 0.002, "backward": 0.002}
        reporter.window_done(position, 0.024, 0.024, batches=4, phases=phases)
    reporter.flush()

    # Assert: 20x, from three windows; the batches over the one step in force would have
    # said 5x
    metrics = running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=info.job_id), timeout=30)
    reasons = [e.message for e in metrics.events if e.kind == "consistency"]
    assert reasons, [e.message for e in metrics.events]
    assert "a window's pull and push take 20.00x a batch's compute" in reasons[0], reasons
