"""Step losses go to the coordinator in small batches, not one RPC per step."""

from __future__ import annotations

import logging
import time

import grpc

from pscluster.v1 import coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

log = logging.getLogger(__name__)


class ProgressReporter:
    def __init__(
        self, stub: co_grpc.CoordinatorStub, worker_id: str, job_id: str, every: float
    ) -> None:
        self.stub = stub
        self.worker_id = worker_id
        self.job_id = job_id
        self.every = every
        self._pending: list[coordinator_pb2.StepMetric] = []
        self._last_flush = time.monotonic()

    def step(self, loss: float, samples: int, epoch: int) -> None:
        self._pending.append(
            coordinator_pb2.StepMetric(
                loss=loss,
                samples=samples,
                worker_id=self.worker_id,
                epoch=epoch,
                unix_time=time.time(),
            )
        )
        if time.monotonic() - self._last_flush >= self.every:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        steps, self._pending = self._pending, []
        try:
            self.stub.ReportProgress(
                coordinator_pb2.ReportProgressRequest(
                    worker_id=self.worker_id, job_id=self.job_id, steps=steps
                ),
                timeout=10,
            )
        except grpc.RpcError as e:
            # Metrics are best effort: losing a report must never stop training.
            log.warning("progress report for %s dropped: %s", self.job_id, e.details())  # type: ignore[attr-defined]
