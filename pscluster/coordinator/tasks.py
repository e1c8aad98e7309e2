"""The workers' side: registration, liveness, handing out leases and taking them back.

A worker holds at most one lease. Train leases make it a member of the job on every shard
before the lease is handed over; finishing, abandoning or losing the lease (the worker went
silent) removes it again, so barriers and clocks never wait on a worker that is not training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.leases import EVAL, TRAIN, Lease
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.workers import WorkerInfo
from pscluster.transport.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    loss: float
    samples: int
    epoch: int
    unix_time: float  # 0: now


class TaskDispatcher:
    def __init__(self, rt: Runtime, jobs: JobManager) -> None:
        self.rt = rt
        self.jobs = jobs

    def register(self, host: str, pid: int, device: str, worker_id: str = "") -> WorkerInfo:
        rt = self.rt
        with rt.lock:
            info, replaced = rt.workers.register(host, pid, device, rt.mono(), worker_id)
            # A process registering under a live id is a restart: the old process's lease is gone.
            released = (
                rt.book.release_worker(info.worker_id, f"worker {info.worker_id} re-registered")
                if replaced
                else None
            )
            # A fresh start: the new process holds no lease, so there is no revocation to hear.
            rt.book.forget_worker(info.worker_id)
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
            rt.workers.require(worker_id, rt.mono())
            released = rt.book.release_worker(worker_id)
            lease = rt.book.acquire(worker_id)
            if lease is not None:
                rt.activity[lease.job_id].last_lease = rt.mono()
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
                        rt.book.release_worker(worker_id)
                rt.sync_members(lease.job_id)
                log.warning("worker %s waits: %s", worker_id, error)
                return None
        log.info(
            "worker %s leased %s %s e%d p%d",
            worker_id,
            lease.lease_id,
            lease.kind,
            lease.epoch,
            lease.partition,
        )
        return lease

    def complete(
        self, worker_id: str, lease_id: str, accuracy: float, loss: float, samples: int
    ) -> None:
        rt = self.rt
        with rt.lock:
            rt.workers.require(worker_id, rt.mono())
            held = rt.book.lease_of(worker_id)
            is_eval = held is not None and held.lease_id == lease_id and held.kind == EVAL
            if is_eval and not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
                raise InvalidArgument(
                    f"test_accuracy={accuracy} is invalid; expected a fraction in [0, 1]"
                )
            outcome = rt.book.complete(worker_id, lease_id)
            lease = outcome.lease
            job_id = lease.job_id
            rt.touch_progress(job_id)
            sched = rt.book.schedule(job_id)
            if lease.kind == EVAL:
                seen = self.jobs.require(job_id).samples
                rt.store.record_epoch(
                    job_id, st.EpochRecord(lease.epoch, accuracy, loss, rt.wall(), seen)
                )
            rt.store.update_job(
                job_id,
                epoch=sched.epoch,
                done_partitions=sorted(sched.done),
                pending_evals=sched.owed_evals(),
            )
            if outcome.epoch_closed is not None:
                log.info("job %s: epoch %d done", job_id, outcome.epoch_closed)
            if outcome.final:
                self.jobs.mark_finishing(job_id)
        if lease.kind == TRAIN:
            rt.sync_members(job_id)
        if outcome.final:
            self.jobs.finish(job_id)

    def report_progress(self, worker_id: str, job_id: str, steps: Sequence[StepReport]) -> None:
        rt = self.rt
        with rt.lock:
            rt.workers.require(worker_id, rt.mono())
        job = self.jobs.require(job_id)
        if job.state in st.TERMINAL:
            raise FailedPrecondition(f"job {job_id} is {job.state}; progress is no longer recorded")
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
        rt.store.append_steps(job_id, records)
        if records:
            with rt.lock:
                rt.touch_progress(job_id)

    def report_failure(self, worker_id: str, job_id: str, error: str) -> None:
        if not error.strip():
            raise InvalidArgument("error is empty; send the reason the job cannot run")
        self.jobs.require(job_id)
        log.warning("worker %s reports job %s failed", worker_id or "?", job_id)
        self.jobs.fail(job_id, error)

    def expire_workers(self) -> list[str]:
        """Declare silent workers dead and return their leases to the pool."""
        rt = self.rt
        affected: set[str] = set()
        with rt.lock:
            dead, forgotten = rt.workers.expire(rt.mono())
            for wid in dead:
                lease = rt.book.release_worker(wid, f"worker {wid} timed out")
                if lease is not None and lease.kind == TRAIN:
                    affected.add(lease.job_id)
            for wid in forgotten:
                rt.book.forget_worker(wid)
        for wid in dead:
            log.warning(
                "worker %s is dead: no heartbeat for %.1f s", wid, rt.workers.timeout_seconds
            )
        for job_id in sorted(affected):
            rt.sync_members(job_id)
        return dead
