"""The workers' side of the coordinator: each RPC is one event for the scheduling core.

A handler takes the lock, lets the core decide (microseconds, no I/O), releases the lock and
hands the actions to the executor; then it waits only for what its own answer depends on:
its writes being durable, and for a train lease, its worker's membership on every shard (its
first pull must find it a member). See docs/architecture.md, "The coordinator".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pscluster.coordinator import store as st
from pscluster.coordinator.core.job_plan import NotScheduled
from pscluster.coordinator.core.kinds import TaskResult, kind_of
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.lease_values import PREDICT, Lease
from pscluster.coordinator.predict_jobs import partition_rows
from pscluster.coordinator.predictions import PredictionStore
from pscluster.coordinator.reports import StepReport, check_progress
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.workers import WorkerInfo
from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.transport.retry import period
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)
# An idle worker that could not be held comes back after this long at least, at most.
MIN_WAIT_SECONDS = 0.2
MAX_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Acquired:
    """What AcquireTask answers: a lease, or how long to wait before asking again."""

    lease: Lease | None
    held_seconds: float = 0.0  # how long the call was held for work (a long poll)
    retry_after: float = 0.0  # not held: come back after this long; held: ask again at once


class TaskDispatcher:
    def __init__(self, rt: Runtime, jobs: JobManager) -> None:
        self.rt = rt
        self.jobs = jobs
        # Held AcquireTask calls each take a server thread: at most half of them wait at once,
        # the others are told to come back later, so a crowd of idle workers cannot starve
        # the rest of the coordinator's RPCs.
        self._slots = max(1, rt.settings.grpc_threads // 2)
        self._holds = threading.BoundedSemaphore(self._slots)

    def acquire_waiting(self, worker_id: str, hold: float) -> Acquired:
        """:meth:`acquire`, but with nothing to hand out, wait up to ``hold`` seconds for work
        to become available (a lease handed back or cut, an epoch closed, a job started) and
        look again.

        A worker that was held may ask again at once. One that was not (every hold slot
        taken) is told when to come back: the more idle workers share the slots, the later,
        so that hundreds of workers idle at an epoch's end poll a few times a second in all
        rather than five times a second each.
        """
        rt = self.rt
        held = False
        # Real time, not ``rt.mono`` (the lease clock, which tests may drive by hand): the
        # hold is how long a server thread and the worker's call really wait.
        started = time.monotonic()
        deadline = started + hold
        try:
            while True:
                with rt.lock:
                    seen = rt.book.available_revision
                lease = self.acquire(worker_id)
                if lease is not None:
                    return Acquired(lease, time.monotonic() - started if held else 0.0)
                if not held:
                    if hold <= 0 or not self._holds.acquire(blocking=False):
                        return Acquired(None, 0.0, self._come_back_in())
                    held = True
                with rt.lock:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return Acquired(None, time.monotonic() - started)
                    if rt.book.available_revision == seen:  # else work appeared: look again
                        rt.tasks_changed.wait(remaining)
        finally:
            if held:
                self._holds.release()

    def _come_back_in(self) -> float:
        """How long an idle worker that could not be held waits before asking again."""
        with self.rt.lock:
            idle = self.rt.workers.alive_count() - len(self.rt.book.outstanding())
        share = max(1, idle) / self._slots
        wait = min(MAX_WAIT_SECONDS, max(MIN_WAIT_SECONDS, MIN_WAIT_SECONDS * share))
        # Spread out: workers that went idle together must not all come back together.
        return period(wait, spread=0.5)

    def register(self, host: str, pid: int, device: str, worker_id: str = "") -> WorkerInfo:
        rt = self.rt
        with rt.lock:
            info, actions = rt.core.register(host, pid, device, worker_id, rt.mono())
        rt.executor.run(actions)
        log.info("worker %s registered (%s, pid %d, %s)", info.worker_id, host, pid, device)
        return info

    def heartbeat(self, worker_id: str) -> tuple[bool, list[str]]:
        """(known, revoked lease ids); unknown workers must register again."""
        with self.rt.lock:
            return self.rt.core.heartbeat(worker_id, self.rt.mono())

    def acquire(self, worker_id: str) -> Lease | None:
        """The worker's next lease, or None: nothing to do now, ask again shortly."""
        rt = self.rt
        with rt.lock:
            lease, actions = rt.core.acquire(worker_id, rt.mono())
        receipt = rt.executor.run(actions)
        if lease is None:
            return None
        if kind_of(lease).takes_part:
            timeout = rt.shards.control_timeout
            error = rt.executor.landed(receipt, lease.job_id, timeout)
            if error is not None:
                # Without its membership on every shard, the worker's pushes would be refused
                # or a barrier would pass without it: take the lease back and let it wait.
                with rt.lock:
                    back = rt.core.take_back(worker_id, lease.lease_id, rt.mono())
                rt.executor.run(back)
                log.warning("worker %s waits: %s", worker_id, error)
                return None
        log.debug(  # hundreds a second on a large cluster: not at INFO
            "worker %s leased %s %s e%d p%d [%d, %s)",
            worker_id,
            lease.lease_id,
            lease.kind,
            lease.epoch,
            lease.partition,
            lease.first_batch,
            lease.end_batch or "end",
        )
        return lease

    def complete(self, worker_id: str, lease_id: str, result: TaskResult) -> None:
        """Hand a lease in; returns once what it changed is durable."""
        rt = self.rt
        with rt.lock:
            actions = rt.core.complete(worker_id, lease_id, result, rt.mono(), rt.wall())
        rt.executor.run(actions)

    def complete_prediction(self, chunks: Iterator[co_pb2.PredictionChunk]) -> None:
        """Store a predict lease's outputs, then hand the lease in (:meth:`complete`).

        The lease is checked before a byte is stored: a worker whose lease was revoked (it
        was declared dead, the job was cancelled) has its upload refused at once."""
        first = next(chunks, None)
        if first is None or not first.worker_id or not first.lease_id:
            raise InvalidArgument("the first chunk must name the worker_id and the lease_id")
        rt = self.rt
        with rt.lock:
            lease = rt.book.lease(first.lease_id)
        if lease is None or lease.worker_id != first.worker_id or lease.kind != PREDICT:
            raise FailedPrecondition(
                f"lease {first.lease_id} is not a predict lease held by worker "
                f"{first.worker_id}; its outputs are not stored"
            )
        spec = co_pb2.JobSpec.FromString(self.jobs.require(lease.job_id).spec)
        rows = partition_rows(spec, lease.partitions, lease.partition)
        store = PredictionStore(rt.blobs, rt.settings.chunk_bytes)
        part = store.write(lease.job_id, lease.partition, rows, first, chunks)
        self.complete(first.worker_id, first.lease_id, TaskResult(samples=part.shape[0]))

    def report_progress(
        self,
        worker_id: str,
        job_id: str,
        steps: Sequence[StepReport],
        progress: co_pb2.LeaseProgress | None = None,
    ) -> int:
        """Record steps and a lease's progress; returns the lease's end batch now (0: the
        lease is not this worker's train lease, or runs to the end of its partition)."""
        rt = self.rt
        dropped = check_progress(progress) if progress is not None else {}
        now = rt.wall()
        records = [
            st.StepRecord(0, s.loss, s.samples, worker_id, s.epoch, s.unix_time or now)
            for s in steps
        ]
        try:
            with rt.lock:
                end, actions = rt.core.report(
                    worker_id, job_id, records, progress, rt.mono(), now, dropped
                )
        except NotScheduled:
            job = self.jobs.require(job_id)  # NOT_FOUND for an unknown job
            raise FailedPrecondition(
                f"job {job_id} is {job.state}; progress is no longer recorded"
            ) from None
        rt.executor.run(actions)
        if progress is not None:
            rt.timelines.record(job_id, worker_id, progress, now)
        return end

    def report_failure(self, worker_id: str, job_id: str, error: str) -> None:
        if not error.strip():
            raise InvalidArgument("error is empty; send the reason the job cannot run")
        if self.jobs.require(job_id).state in st.TERMINAL:
            return  # already ended: a second report (another worker's, a retry) changes nothing
        rt = self.rt
        with rt.lock:
            # Only a worker working on the job may fail it: it reports while it holds the
            # lease whose model or data would not load. Anyone else is refused, job untouched.
            rt.core.may_fail(worker_id, job_id, rt.mono())
        log.warning("worker %s reports job %s failed", worker_id, job_id)
        self.jobs.fail(job_id, error)

    def expire_workers(self) -> list[str]:
        """Declare silent workers dead and return their leases to the pool."""
        rt = self.rt
        with rt.lock:
            dead, actions = rt.core.expire(rt.mono())
        rt.executor.run(actions)
        for worker_id in dead:
            log.warning(
                "worker %s is dead: no heartbeat for %.1f s",
                worker_id,
                rt.workers.timeout_seconds,
            )
        return dead
