"""The requests a simulated worker (bench/sim_workers.py) sends the coordinator, built as
pscluster/worker/agent.py and progress.py build theirs for a one-batch lease."""

from __future__ import annotations

import os
import socket
import time

from pscluster.v1 import coordinator_pb2 as co_pb2


def registration(worker_id: str) -> co_pb2.RegisterWorkerRequest:
    """Register, or re-register under ``worker_id`` (empty the first time)."""
    return co_pb2.RegisterWorkerRequest(
        host=socket.gethostname(), pid=os.getpid(), device="cpu", worker_id=worker_id
    )


def lease_fields(worker_id: str, kind: str, task: co_pb2.Task) -> list[object]:
    """What the records keep of a lease: worker, kind, job, epoch, partition, first_batch,
    end_batch, lease."""
    return [
        worker_id,
        kind,
        task.job_id,
        task.epoch,
        task.partition,
        task.first_batch,
        task.end_batch,
        task.lease_id,
    ]


def progress(worker_id: str, task: co_pb2.Task, samples: int) -> co_pb2.ReportProgressRequest:
    """A StepMetric and the lease's LeaseProgress, as the agent's reporter sends when a
    one-batch lease ends."""
    return co_pb2.ReportProgressRequest(
        worker_id=worker_id,
        job_id=task.job_id,
        steps=[
            co_pb2.StepMetric(
                loss=1.0,
                samples=samples,
                worker_id=worker_id,
                epoch=task.epoch,
                unix_time=time.time(),
            )
        ],
        lease=co_pb2.LeaseProgress(
            lease_id=task.lease_id,
            position=task.first_batch + 1,  # every partition is one batch
            batches=1,
            busy_seconds=0.001,
            step_seconds=0.001,
        ),
    )


def eval_completion(worker_id: str, task: co_pb2.Task, shards: int) -> co_pb2.CompleteTaskRequest:
    """An eval lease's completion in both contracts: the new one (metrics + versions) and the
    old one (test_accuracy/test_loss)."""
    complete = co_pb2.CompleteTaskRequest(worker_id=worker_id, lease_id=task.lease_id)
    complete.metrics.update({"loss": 1.0, "accuracy": 0.5})
    complete.versions.extend([0] * shards)
    complete.test_accuracy = 0.5
    complete.test_loss = 1.0
    return complete


def train_completion(worker_id: str, task: co_pb2.Task, samples: int) -> co_pb2.CompleteTaskRequest:
    complete = co_pb2.CompleteTaskRequest(worker_id=worker_id, lease_id=task.lease_id)
    complete.samples = samples
    return complete
