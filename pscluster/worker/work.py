"""The two kinds of lease a worker runs, each to the request that completes it."""

from __future__ import annotations

import logging
import time

import grpc

from pscluster.shard_client import ShardError
from pscluster.v1 import coordinator_pb2
from pscluster.worker.progress import ProgressReporter
from pscluster.worker.trainer import Trainer

log = logging.getLogger(__name__)


def train_lease(
    trainer: Trainer, task: coordinator_pb2.Task, reporter: ProgressReporter
) -> coordinator_pb2.CompleteTaskRequest:
    """Train the lease's batches (reporting as it goes); its completion, with the samples
    trained (dropped batches are not in them: the reporter counted those)."""
    request = coordinator_pb2.CompleteTaskRequest(
        worker_id=trainer.worker_id, lease_id=task.lease_id
    )
    started = time.monotonic()
    try:
        request.samples = trainer.train(task, reporter)
    finally:
        reporter.flush()
    log.info(
        "job %s epoch %d partition %d batches [%d, %s): %d samples in %.2fs",
        task.job_id,
        task.epoch,
        task.partition,
        task.first_batch,
        reporter.end_batch or "end",
        request.samples,
        time.monotonic() - started,
    )
    return request


def evaluate_lease(
    trainer: Trainer, task: coordinator_pb2.Task
) -> coordinator_pb2.CompleteTaskRequest:
    """Evaluate the current parameters; the completion carries every measure and the shard
    versions measured (the coordinator saves exactly that model)."""
    results, versions = trainer.evaluate()
    request = coordinator_pb2.CompleteTaskRequest(
        worker_id=trainer.worker_id,
        lease_id=task.lease_id,
        test_accuracy=results.get("accuracy", -1.0),
        test_loss=results["loss"],
        versions=versions,
    )
    request.metrics.update(results)
    log.info(
        "job %s epoch %d: %s",
        task.job_id,
        task.epoch,
        ", ".join(f"test {k} {v:.4f}" for k, v in sorted(results.items())),
    )
    return request


def refused_for_good(error: ShardError | grpc.RpcError) -> bool:
    """A shard or the coordinator refused what the work produced as malformed: the same work
    would be refused again (any other failure loses the lease, and the work is redone)."""
    if isinstance(error, ShardError):
        return error.status == grpc.StatusCode.INVALID_ARGUMENT
    return isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.INVALID_ARGUMENT
