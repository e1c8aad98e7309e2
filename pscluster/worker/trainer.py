"""One lease of work: train on a partition (pull, forward/backward, push) or evaluate.

The loop is the same in every consistency mode; the shards decide when a pull may return and
whether a push is applied. The worker only remembers, in sync mode, which step it pushed for,
so that its next pull waits for that step's barrier (min_version = version + 1), in this lease
or its next one on the same job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import torch

from pscluster.config import Settings
from pscluster.data.partitions import batches
from pscluster.transport import wire
from pscluster.v1 import coordinator_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.backoff import Backoff
from pscluster.worker.local_sgd import Window
from pscluster.worker.progress import ProgressReporter
from pscluster.worker.runtime import JobRuntime
from pscluster.worker.shards import PushExtras, Snapshot, is_retryable
from pscluster.worker.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)

# A batch whose push is refused as stale is recomputed on fresh parameters this many times
# before it is skipped (only a worker cut off for long gets there).
MAX_ATTEMPTS = 5


T = TypeVar("T")


class LeaseLost(Exception):
    """The lease no longer stands (revoked, expired, job gone): abandon the work."""


class Trainer:
    def __init__(
        self,
        runtime: JobRuntime,
        worker_id: str,
        settings: Settings,
        lease_alive: Callable[[], bool],
        telemetry: WorkerTelemetry | None = None,
    ) -> None:
        self.rt = runtime
        self.telemetry = telemetry
        self.worker_id = worker_id
        self.settings = settings
        self.lease_alive = lease_alive
        self.nonfinite_batches = 0
        self.late_batches = 0

    def _check(self) -> None:
        if not self.lease_alive():
            raise LeaseLost("lease revoked or worker stopping")

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Retry while the failure is temporary and the lease stands; NOT_FOUND loses the lease.

        Every attempt has its deadline (set by ``fn``); a push retried this way resends the
        same seq, so a shard that had applied it before the connection broke answers it again
        without applying it twice. UNAVAILABLE backs off (a shard restarting or cut off);
        DEADLINE_EXCEEDED does not (the deadline was the wait, e.g. a sync barrier not met).
        """
        backoff = Backoff(0.05, 2.0)
        while True:
            self._check()
            try:
                return fn()
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.NOT_FOUND:
                    raise LeaseLost(f"{what}: {e.details()}") from e  # type: ignore[attr-defined]
                if not is_retryable(e):
                    raise
                if code == grpc.StatusCode.UNAVAILABLE:
                    time.sleep(backoff.delay())
                log.debug("%s: %s, retrying", what, e.details())  # type: ignore[attr-defined]

    def pull(self, min_versions: list[int] | None) -> Snapshot:
        timeout = self.settings.pull_wait_seconds + 5
        dtype = self.rt.pull_dtype

        def attempt() -> Snapshot:
            started = time.perf_counter()
            snap = self.rt.shards.pull(self.worker_id, min_versions, timeout, dtype)
            if self.telemetry is not None:
                nbytes = self.rt.shards.size * wire.itemsize(dtype)
                self.telemetry.pulled(self.rt.job_id, time.perf_counter() - started, nbytes)
            return snap

        return self._call(attempt, "pull")

    def train(self, task: coordinator_pb2.Task, reporter: ProgressReporter) -> int:
        """Train on the lease's batches, a window of ``local_steps`` batches per pull and push
        (one batch when the job has no local steps)."""
        rt = self.rt
        spec = rt.spec
        plan = batches(
            rt.train_rows, task.partitions, task.partition, task.epoch, spec.batch_size, spec.seed
        )
        sync = spec.mode == "sync"
        window_size = max(1, spec.local_steps)
        samples = 0
        position = task.first_batch

        def lease_end() -> int:
            # Read each window: the coordinator may cut the lease short while it runs.
            return min(reporter.end_batch or len(plan), len(plan))

        while position < lease_end():
            started = time.perf_counter()
            end = min(position + window_size, lease_end())
            data = [rt.batch(torch.from_numpy(plan[p])) for p in range(position, end)]
            waited = 0.0
            for _attempt in range(MAX_ATTEMPTS):
                snap = self.pull(rt.min_versions)
                waited += snap.waited_seconds
                window = rt.local.run(snap.values, snap.buffers, data)
                if window.nonfinite:
                    # Shards refuse non-finite gradients anyway; not sending one saves a
                    # half-applied step where only some shards would refuse it.
                    self.nonfinite_batches += window.nonfinite
                    log.warning(
                        "non-finite gradient on job %s: %d batch(es) skipped",
                        rt.job_id,
                        window.nonfinite,
                    )
                if window.update is None:
                    break
                replies = self._push(window, snap, task.epoch)
                stale = [r.outcome == ps_pb2.PUSH_OUTCOME_STALE for r in replies]
                late = [r.outcome == ps_pb2.PUSH_OUTCOME_LATE for r in replies]
                if sync:
                    rt.min_versions = [
                        0 if s or lt else v + 1
                        for s, lt, v in zip(stale, late, snap.versions, strict=True)
                    ]
                if any(late) or any(stale):
                    rt.local.discard()  # local steps: their optimizer state goes back too
                if any(late):
                    # Backup workers: the step closed without this gradient. As in Chen et
                    # al., it is dropped and the worker goes on with fresh parameters.
                    self.late_batches += len(data)
                    break
                if not any(stale):
                    for loss, size in window.steps:
                        reporter.step(loss, size, task.epoch)
                        if self.telemetry is not None:
                            self.telemetry.stepped(rt.job_id)
                    break
            trained = sum(int(y.shape[0]) for _, y in data)
            samples += trained
            if self.telemetry is not None:
                self.telemetry.trained(rt.job_id, trained)
            position = end
            wall = time.perf_counter() - started
            own = max(0.0, wall - waited)
            busy = self._slow_down(own)  # the injected delay adds to both
            reporter.batch_done(position, busy, wall + busy - own, batches=len(data))
        return samples

    def _slow_down(self, busy: float) -> float:
        """Fault injection for straggler tests and benchmarks (``PSC_SLOWDOWN``): stretch the
        worker's own time on each batch (all but the waits on other workers) to ``slowdown``
        times its length, as a slower machine would. Returns the busy time it now took."""
        factor = self.settings.slowdown
        if factor > 1.0:
            time.sleep(busy * (factor - 1.0))
            if self.telemetry is not None:
                self.telemetry.slept(busy * (factor - 1.0))
            return busy * factor
        return busy

    def _push(self, window: Window, snap: Snapshot, epoch: int) -> list[ps_pb2.PushReply]:
        assert window.update is not None
        seq = self.rt.next_seq()  # one id per push: a retry of this push reuses it
        timeout = self.settings.rpc_timeout_seconds
        encoder = self.rt.encoder
        # Encoded once: a retry resends the same bytes, and codec state moves on only for the
        # ranges whose shard took the push (a stale refusal is recomputed, not double-counted).
        encoded = encoder.encode(window.update, epoch)
        payloads = [e.payload for e in encoded]
        extras = PushExtras(window.buffer_delta, window.grad_scale)

        def send() -> list[ps_pb2.PushReply]:
            started = time.perf_counter()
            replies = self.rt.shards.push(
                self.worker_id, seq, payloads, encoder.name, snap, window.samples, timeout, extras
            )
            if self.telemetry is not None:
                nbytes = sum(memoryview(p).nbytes for p in payloads)
                self.telemetry.pushed(self.rt.job_id, time.perf_counter() - started, nbytes)
            return replies

        try:
            replies = self._call(send, "push")
            for i, (reply, e) in enumerate(zip(replies, encoded, strict=True)):
                if reply.outcome != ps_pb2.PUSH_OUTCOME_STALE:
                    encoder.commit(i, e)
            return replies
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                # sync: this worker already pushed for the open step; wait for its barrier.
                return [ps_pb2.PushReply(outcome=ps_pb2.PUSH_OUTCOME_BUFFERED)] * len(snap.versions)
            raise

    def evaluate(self) -> tuple[dict[str, float], list[int]]:
        """The job's loss and metric on the test set, and the shard versions they are of."""
        snap = self.pull_observer()
        return self.rt.evaluate(snap), snap.versions

    def pull_observer(self) -> Snapshot:
        timeout = self.settings.rpc_timeout_seconds
        return self._call(lambda: self.rt.shards.pull("", None, timeout), "pull")
