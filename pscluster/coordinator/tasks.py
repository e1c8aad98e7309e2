"""The workers' side: registration, liveness, handing out leases and taking them back.

A worker holds at most one lease. Train leases make it a member of the job on every shard
before the lease is handed over; finishing, abandoning or losing the lease (the worker went
silent) removes it again, so barriers and clocks never wait on a worker that is not training.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.leases import EVAL, TRAIN, Lease
from pscluster.coordinator.reports import Evaluated, StepReport, check_evaluation, check_progress
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.workers import WorkerInfo
from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)
_MAX_REASON = 64  # characters in a dropped-batch reason


class TaskDispatcher:
    def __init__(self, rt: Runtime, jobs: JobManager) -> None:
        self.rt = rt
        self.jobs = jobs
        # Held AcquireTask calls each take a server thread: at most half of them wait at once,
        # the others are told to come back later, so a crowd of idle workers cannot starve
        # the rest of the coordinator's RPCs.
        self._holds = threading.BoundedSemaphore(max(1, rt.settings.grpc_threads // 2))

    def acquire_waiting(self, worker_id: str, hold: float) -> tuple[Lease | None, bool]:
        """:meth:`acquire`, but with nothing to hand out, wait up to ``hold`` seconds for the
        lease book to change (a lease ended or cut, a job started) and look again.

        Returns the lease (or None) and whether the call was held: a worker that was held
        asks again at once, one that was not (every hold slot taken) waits a moment first.
        """
        rt = self.rt
        held = False
        # Real time, not ``rt.mono`` (the lease clock, which tests may drive by hand): the
        # hold is how long a server thread and the worker's call really wait.
        deadline = time.monotonic() + hold
        try:
            while True:
                with rt.lock:
                    seen = rt.book.revision
                lease = self.acquire(worker_id)
                if lease is not None:
                    return lease, held
                if not held:
                    if hold <= 0 or not self._holds.acquire(blocking=False):
                        return None, False
                    held = True
                with rt.lock:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None, True
                    if rt.book.revision == seen:  # else something changed: look again now
                        rt.tasks_changed.wait(remaining)
        finally:
            if held:
                self._holds.release()

    def register(self, host: str, pid: int, device: str, worker_id: str = "") -> WorkerInfo:
        rt = self.rt
        with rt.lock:
            info, replaced = rt.workers.register(host, pid, device, rt.mono(), worker_id)
            # A process registering under a live id is a restart: the old process's lease is gone.
            released = (
                self._release(info.worker_id, f"worker {info.worker_id} re-registered")
                if replaced
                else None
            )
            # A fresh start: the new process holds no lease, so there is no revocation to hear.
            rt.book.forget_worker(info.worker_id)
            rt.save_leases()
        if released is not None and released.kind == TRAIN:
            rt.sync_members(released.job_id)
        log.info("worker %s registered (%s, pid %d, %s)", info.worker_id, host, pid, device)
        return info

    def heartbeat(self, worker_id: str) -> tuple[bool, list[str]]:
        """(known, revoked lease ids); unknown workers must register again."""
        rt = self.rt
        with rt.lock:
            if not rt.workers.touch(worker_id, rt.mono()):
                return False, []
            return True, rt.book.take_revoked(worker_id)

    def acquire(self, worker_id: str) -> Lease | None:
        """The worker's next lease, or None: nothing to do now, ask again shortly."""
        rt = self.rt
        with rt.lock:
            now = rt.mono()
            rt.workers.require(worker_id, now)
            released = self._release(worker_id)
            lease = rt.book.acquire(
                worker_id, lambda job_id: rt.relief.share(job_id, worker_id, now)
            )
            if lease is None:
                lease = self._take_over(worker_id, now)
            if lease is not None:
                rt.activity[lease.job_id].last_lease = now
                rt.relief.granted(lease, now)
            rt.save_leases()
        if released is not None and released.kind == TRAIN:
            log.info("worker %s abandoned lease %s", worker_id, released.lease_id)
            if lease is None or lease.kind != TRAIN or lease.job_id != released.job_id:
                rt.sync_members(released.job_id)
        if lease is None:
            log.debug("worker %s waits: no running job has a task to hand out", worker_id)
            return None
        if lease.kind == TRAIN:
            error = rt.sync_members(lease.job_id)
            if error is not None:
                # Without its membership on every shard, the worker's pushes would be refused
                # or a barrier would pass without it: take the lease back and let it wait.
                with rt.lock:
                    current = rt.book.lease_of(worker_id)
                    if current is not None and current.lease_id == lease.lease_id:
                        self._release(worker_id)
                    rt.save_leases()
                rt.sync_members(lease.job_id)
                log.warning("worker %s waits: %s", worker_id, error)
                return None
        log.info(
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

    def _take_over(self, worker_id: str, now: float) -> Lease | None:
        """Call under lock, for a worker that found nothing free: cut short a straggler's
        lease (or one past its deadline) and lease the rest of it to this worker."""
        rt = self.rt
        for job_id in rt.book.job_ids():
            split = rt.relief.pick_split(job_id, rt.book.train_leases(job_id), worker_id, now)
            if split is None:
                continue
            rest = rt.book.split(split.lease.lease_id, split.new_end)
            if rest is None:
                continue
            lease = rt.book.acquire(worker_id)
            if lease is None:  # cannot happen: the rest was just put first in the pool
                return None
            self._event(
                job_id,
                "split",
                split.lease.worker_id,
                f"{split.why}: batches [{rest.first}, {rest.end}) of partition "
                f"{rest.partition} (epoch {lease.epoch}) go to worker {worker_id}",
            )
            return lease
        return None

    def _release(self, worker_id: str, revoke_reason: str | None = None) -> Lease | None:
        """Call under lock: hand the worker's lease back, keeping the batches it reported."""
        rt = self.rt
        held = rt.book.lease_of(worker_id)
        if held is None:
            return None
        position = rt.relief.position(held.lease_id)
        rt.relief.ended(held.lease_id)
        return rt.book.release_worker(worker_id, revoke_reason, position)

    def _event(self, job_id: str, kind: str, worker_id: str, message: str) -> None:
        log.info("job %s: %s", job_id, message)
        self.rt.store.append_event(job_id, st.EventRecord(self.rt.wall(), kind, worker_id, message))

    def complete(
        self,
        worker_id: str,
        lease_id: str,
        samples: int,
        evaluation: Evaluated | None = None,
    ) -> None:
        rt = self.rt
        diverged = ""
        with rt.lock:
            rt.workers.require(worker_id, rt.mono())
            held = rt.book.lease_of(worker_id)
            if held is not None and held.lease_id == lease_id and held.kind == EVAL:
                evaluation = check_evaluation(evaluation, self.jobs.require(held.job_id))
            outcome = rt.book.complete(worker_id, lease_id)
            lease = outcome.lease
            rt.relief.ended(lease_id)
            job_id = lease.job_id
            rt.touch_progress(job_id)
            sched = rt.book.schedule(job_id)
            if lease.kind == EVAL and evaluation is not None:
                seen = self.jobs.require(job_id).samples
                rt.store.record_epoch(job_id, evaluation.record(lease.epoch, rt.wall(), seen))
                diverged = evaluation.divergence(lease.epoch)
            rt.store.update_job(
                job_id,
                epoch=sched.epoch,
                done_partitions=sorted(sched.done),
                pending_evals=sched.owed_evals(),
            )
            if outcome.epoch_closed is not None:
                log.info("job %s: epoch %d done", job_id, outcome.epoch_closed)
            if outcome.final and not diverged:
                self.jobs.mark_finishing(job_id)
            rt.save_leases()
        if lease.kind == TRAIN:
            rt.sync_members(job_id)
        if diverged:
            self.jobs.fail(job_id, diverged)
        elif outcome.final:
            self.jobs.finish(job_id)

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
        with rt.lock:
            rt.workers.require(worker_id, rt.mono())
        job = self.jobs.require(job_id)
        if job.state in st.TERMINAL:
            raise FailedPrecondition(f"job {job_id} is {job.state}; progress is no longer recorded")
        dropped: dict[str, int] = {}
        if progress is not None:
            check_progress(progress)
            dropped = _dropped_batches(progress)
        for i, s in enumerate(steps):
            if s.epoch >= job.epochs:
                raise InvalidArgument(
                    f"steps[{i}].epoch={s.epoch} is out of range; the job has epochs "
                    f"0..{job.epochs - 1}"
                )
        now = rt.wall()
        records = [
            st.StepRecord(0, s.loss, s.samples, worker_id, s.epoch, s.unix_time or now)
            for s in steps
        ]
        if records:
            rt.store.append_steps(job_id, records)
        if dropped:
            self._record_dropped(job_id, worker_id, dropped)
        end, exclusion = 0, None
        with rt.lock:
            if records:
                rt.touch_progress(job_id)
            if progress is not None and progress.lease_id:
                end, exclusion = self._lease_progress(worker_id, job_id, progress)
        if exclusion is not None:
            added, removed = exclusion
            for w in added:
                self._event(job_id, "excluded", w, f"worker {w} no longer holds back the ssp clock")
            for w in removed:
                self._event(job_id, "included", w, f"worker {w} counts in the ssp clock again")
            rt.sync_members(job_id)
        return end

    def _record_dropped(self, job_id: str, worker_id: str, dropped: dict[str, int]) -> None:
        """Batches a worker trained nothing on: into the job's totals
        (``job.metrics().batches_dropped``) and one event that names them."""
        self.rt.store.add_dropped(job_id, dropped)
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items()))
        total = sum(dropped.values())
        message = f"worker {worker_id} dropped {total} batch(es) without training on them: {counts}"
        self._event(job_id, "batches_dropped", worker_id, message)

    def _lease_progress(
        self, worker_id: str, job_id: str, progress: co_pb2.LeaseProgress
    ) -> tuple[int, tuple[list[str], list[str]] | None]:
        """Call under lock: fold in a lease's progress; (its end batch, ssp exclusion change)."""
        rt = self.rt
        now = rt.mono()
        lease = rt.book.lease(progress.lease_id)
        if lease is not None and (lease.worker_id != worker_id or lease.job_id != job_id):
            lease = None  # not this worker's: its timings still count, its position does not
        for change in rt.relief.on_progress(job_id, worker_id, lease, progress, now):
            self._event(job_id, change.kind, change.worker_id, change.message)
        return (lease.end_batch if lease else 0), rt.relief.exclusion_changed(job_id, now)

    def report_failure(self, worker_id: str, job_id: str, error: str) -> None:
        if not error.strip():
            raise InvalidArgument("error is empty; send the reason the job cannot run")
        if self.jobs.require(job_id).state in st.TERMINAL:
            return  # already ended: a second report (another worker's, a retry) changes nothing
        rt = self.rt
        with rt.lock:
            # Only a worker working on the job may fail it: it reports while it holds the
            # lease whose model or data would not load. Anyone else is refused, job untouched.
            rt.workers.require(worker_id, rt.mono())
            lease = rt.book.lease_of(worker_id)
            if lease is None or lease.job_id != job_id:
                raise FailedPrecondition(
                    f"worker {worker_id} holds no lease on job {job_id}; only a worker running "
                    "the job may report that it cannot run"
                )
        log.warning("worker %s reports job %s failed", worker_id, job_id)
        self.jobs.fail(job_id, error)

    def expire_workers(self) -> list[str]:
        """Declare silent workers dead and return their leases to the pool."""
        rt = self.rt
        affected: set[str] = set()
        with rt.lock:
            dead, forgotten = rt.workers.expire(rt.mono())
            for wid in dead:
                lease = self._release(wid, f"worker {wid} timed out")
                if lease is not None and lease.kind == TRAIN:
                    affected.add(lease.job_id)
            for wid in forgotten:
                rt.book.forget_worker(wid)
            rt.save_leases()
        for wid in dead:
            log.warning(
                "worker %s is dead: no heartbeat for %.1f s", wid, rt.workers.timeout_seconds
            )
        for job_id in sorted(affected):
            rt.sync_members(job_id)
        return dead


def _dropped_batches(progress: co_pb2.LeaseProgress) -> dict[str, int]:
    """The batches a report says were dropped, by reason (checked: the reasons are names)."""
    out = {}
    for reason, n in progress.dropped.items():
        if not reason or len(reason) > _MAX_REASON or not reason.replace("_", "").isalnum():
            raise InvalidArgument(
                f"lease.dropped has the reason {reason[:_MAX_REASON]!r}; expected a short name "
                "such as 'stale', 'late' or 'nonfinite'"
            )
        if n:
            out[reason] = int(n)
    return out
