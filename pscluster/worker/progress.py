"""Step losses go to the coordinator in small batches, not one RPC per step.

With them goes the lease's progress: where the worker is in its batches (so a lease handed
back or cut short loses no work) and how long the batches took (the coordinator's straggler
detector). The reply may move the lease's end earlier: a faster worker takes the rest.

While the coordinator cannot be reached (a restart), reports are kept and sent with the next
one that goes through, and attempts back off, so that training is not slowed by a report per
batch timing out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import grpc

from pscluster.transport.retry import Backoff
from pscluster.v1 import coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

log = logging.getLogger(__name__)
# Steps kept while the coordinator is unreachable; the oldest are dropped beyond this (they
# are metrics, and an outage long enough to fill it is one the job will be told about).
MAX_PENDING_STEPS = 100_000
# A coordinator down, restarting or overloaded: the report is kept for the next one.
PASSING = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


class ProgressReporter:
    def __init__(
        self,
        stub: co_grpc.CoordinatorStub,
        worker_id: str,
        job_id: str,
        every: float,
        lease_id: str = "",
        end_batch: int = 0,
        *,
        early: bool = False,
    ) -> None:
        """``early``: the first report goes after the first window, not ``every`` seconds
        in (a worker's first lease of a job: mode "auto" decides at the first report, from
        its phases)."""
        self.stub = stub
        self.worker_id = worker_id
        self.job_id = job_id
        self.every = every
        self.lease_id = lease_id
        # Where the lease ends now (0: the end of the partition); the coordinator may cut it.
        self.end_batch = end_batch
        self._pending: list[coordinator_pb2.StepMetric] = []
        self._progress = coordinator_pb2.LeaseProgress(lease_id=lease_id)
        self._last_flush = -math.inf if early else time.monotonic()
        self._backoff = Backoff(1.0, 8.0)
        self._retry_at = 0.0  # after a failed report, no attempt before this (monotonic)
        self.dropped_reports = 0

    def window_done(
        self,
        position: int,
        busy_seconds: float,
        step_seconds: float,
        batches: int = 1,
        phases: Mapping[str, float] | None = None,
    ) -> None:
        """One window of the lease is done: its ``batches`` batches (trained or dropped;
        more than one with local SGD steps), ``position`` the index of the next one;
        ``busy_seconds`` is their wall time less the waits on others; ``phases`` where their
        wall time went (pscluster.worker.phases)."""
        p = self._progress
        p.position = position
        p.batches += batches
        p.windows += 1
        p.busy_seconds += busy_seconds
        p.step_seconds += step_seconds
        for name, seconds in (phases or {}).items():
            p.phase_seconds[name] += seconds
        now = time.monotonic()
        if now - self._last_flush >= self.every and now >= self._retry_at:
            self.flush()

    def dropped(self, reason: str, batches: int) -> None:
        """``batches`` of the lease trained nothing, for ``reason`` (see LeaseProgress)."""
        if batches > 0:
            self._progress.dropped[reason] += batches

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
        """Send what was gathered; on failure keep it for the next report and back off."""
        self._last_flush = time.monotonic()
        progress = self._progress
        if not self._pending and not progress.batches and not progress.dropped:
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
        except grpc.RpcError as e:
            # Never fatal to training; kept for the next report if the failure is passing.
            code = e.code()  # type: ignore[attr-defined]
            self.dropped_reports += 1
            self._retry_at = time.monotonic() + self._backoff.delay()
            if code in PASSING:
                self._keep(steps, progress)
            log.warning("progress report for %s failed: %s", self.job_id, e.details())  # type: ignore[attr-defined]
            return
        self._backoff.reset()
        self._retry_at = 0.0
        if reply.end_batch:
            self.end_batch = reply.end_batch

    def _keep(
        self, steps: list[coordinator_pb2.StepMetric], progress: coordinator_pb2.LeaseProgress
    ) -> None:
        """Put an unsent report back in front of what was gathered since."""
        self._pending = (steps + self._pending)[-MAX_PENDING_STEPS:]
        now = self._progress
        merged = coordinator_pb2.LeaseProgress(
            lease_id=self.lease_id,
            position=max(now.position, progress.position),
            batches=progress.batches + now.batches,
            windows=progress.windows + now.windows,
            busy_seconds=progress.busy_seconds + now.busy_seconds,
            step_seconds=progress.step_seconds + now.step_seconds,
        )
        for counts in (progress.dropped, now.dropped):
            for reason, batches in counts.items():
                merged.dropped[reason] += batches
        for phases in (progress.phase_seconds, now.phase_seconds):
            for name, seconds in phases.items():
                merged.phase_seconds[name] += seconds
        self._progress = merged
