"""Step losses go to the coordinator in small batches, not one RPC per step.

With them goes the lease's progress: where the worker is in its batches (so a lease handed
back or cut short loses no work) and how long the batches took (the coordinator's straggler
detector). The reply may move the lease's end earlier: a faster worker takes the rest.
"""

from __future__ import annotations

import logging
import time

import grpc

from pscluster.v1 import coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

log = logging.getLogger(__name__)


class ProgressReporter:
    def __init__(
        self,
        stub: co_grpc.CoordinatorStub,
        worker_id: str,
        job_id: str,
        every: float,
        lease_id: str = "",
        end_batch: int = 0,
    ) -> None:
        self.stub = stub
        self.worker_id = worker_id
        self.job_id = job_id
        self.every = every
        self.lease_id = lease_id
        # Where the lease ends now (0: the end of the partition); the coordinator may cut it.
        self.end_batch = end_batch
        self._pending: list[coordinator_pb2.StepMetric] = []
        self._progress = coordinator_pb2.LeaseProgress(lease_id=lease_id)
        self._last_flush = time.monotonic()

    def batch_done(self, position: int, busy_seconds: float, step_seconds: float) -> None:
        """One batch of the lease is done (applied, refused or dropped): ``position`` is the
        index of the next one; ``busy_seconds`` is its wall time less the waits on others."""
        p = self._progress
        p.position = position
        p.batches += 1
        p.busy_seconds += busy_seconds
        p.step_seconds += step_seconds
        if time.monotonic() - self._last_flush >= self.every:
            self.flush()

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

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        progress = self._progress
        if not self._pending and not progress.batches:
            return
        steps, self._pending = self._pending, []
        request = coordinator_pb2.ReportProgressRequest(
            worker_id=self.worker_id, job_id=self.job_id, steps=steps
        )
        if self.lease_id:
            request.lease.CopyFrom(progress)
        self._progress = coordinator_pb2.LeaseProgress(
            lease_id=self.lease_id, position=progress.position
        )
        try:
            reply = self.stub.ReportProgress(request, timeout=10)
            if reply.end_batch:
                self.end_batch = reply.end_batch
        except grpc.RpcError as e:
            # Metrics are best effort: losing a report must never stop training.
            log.warning("progress report for %s dropped: %s", self.job_id, e.details())  # type: ignore[attr-defined]
