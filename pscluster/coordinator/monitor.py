"""No silent hangs: threads that expire dead workers, retry what failed, and say why a job
is not moving.

Two loops, so that retrying an unreachable shard (which can take a whole RPC deadline) never
delays declaring a worker dead: the liveness loop (dead workers, status lines) and the retry
loop (pending jobs' shard init, final models not saved yet; memberships retry in their own
pump, members.py).
Every status line is computed from the coordinator's own state first (no workers, no lease
taken); only a job stalled for ``stall_seconds`` costs shard calls, to name the barrier or the
shard it is stuck on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pscluster.coordinator.finish import Finisher
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.tasks import TaskDispatcher
from pscluster.shard_client import ShardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    """A running job's status line; ``hopeless``: it stalled past ``stall_fail_seconds`` with
    its leases held, and fails with that line."""

    line: str
    hopeless: bool = False


class Monitor:
    def __init__(
        self, rt: Runtime, jobs: JobManager, finisher: Finisher, tasks: TaskDispatcher
    ) -> None:
        self.rt = rt
        self.jobs = jobs
        self.finisher = finisher
        self.tasks = tasks
        # Half a heartbeat: a dead worker is noticed at most half a heartbeat late.
        self.interval = max(0.05, rt.settings.heartbeat_seconds / 2)
        self.retry_interval = max(self.interval, 0.5)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._loop,
                args=(self.tick, self.interval),
                name="coordinator-liveness",
                daemon=True,
            ),
            threading.Thread(
                target=self._loop,
                args=(self.retry, self.retry_interval),
                name="coordinator-retry",
                daemon=True,
            ),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both loops; a retry in flight ends within its RPC deadline."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _loop(self, step: Callable[[], None], interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                step()
            except Exception:  # the monitor must outlive any one bad job or shard
                log.exception("monitor step %s failed", step.__name__)

    def retry(self) -> None:
        for job_id in self.jobs.pending_ids():
            if self._stop.is_set():
                return
            self.jobs.start(job_id)
        for job_id in self.finisher.finishing_ids():
            self.finisher.finish(job_id)

    def tick(self) -> None:
        self.tasks.expire_workers()
        with self.rt.lock:
            running = self.rt.book.job_ids()
        for job_id in running:
            status = self.describe(job_id)
            job = self.rt.store.get_job(job_id)
            if status is None or job is None or job.status_message == status.line:
                continue
            if status.hopeless:
                self.jobs.fail(job_id, status.line)
                continue
            with self.rt.lock:  # the job may have ended since: never overwrite its final line
                if self.rt.book.has_job(job_id):
                    self.rt.store.update_job(job_id, status_message=status.line)

    def describe(self, job_id: str) -> Status | None:
        """The running job's status line; None if it is no longer scheduled."""
        rt = self.rt
        with rt.lock:
            if not rt.book.has_job(job_id):
                return None
            sched = rt.book.schedule(job_id)
            act = rt.activity[job_id]
            holders = rt.book.holders(job_id)
            alive = rt.workers.alive_count()
            if not sched.evaluates:  # a predict job: one epoch of partitions to score
                base = (
                    f"scoring: {len(sched.done)}/{sched.partitions} partitions done, "
                    f"{len(holders)} workers"
                )
            elif sched.training_done:
                base = f"training done: final evaluation pending, {len(holders)} workers"
            else:
                base = (
                    f"epoch {sched.epoch + 1}/{sched.epochs}: {len(sched.done)}/"
                    f"{sched.partitions} partitions done, {len(holders)} workers"
                )
        now = rt.mono()
        idle = now - act.last_progress
        if idle < rt.settings.stall_seconds:
            return Status(base)
        if alive == 0:
            why = "no workers alive"
        elif not holders:
            why = f"no worker has taken a lease for {now - act.last_lease:.0f} s"
        else:
            stuck = ", ".join(holders)
            why = self._shard_reason(job_id) or f"workers [{stuck}] hold leases but report nothing"
            limit = rt.settings.stall_fail_seconds
            if 0 < limit <= idle:
                line = f"no progress for {idle:.0f} s (PSC_STALL_FAIL_SECONDS={limit:g}): {why}"
                return Status(line, hopeless=True)
        return Status(f"{base}; stalled for {idle:.0f} s: {why}")

    def _shard_reason(self, job_id: str) -> str | None:
        job = self.rt.store.get_job(job_id)
        if job is None:
            return None
        addresses = [p.address for p in job.shards]
        for address, stats in zip(
            addresses, self.rt.shards.job_stats(addresses, job_id), strict=True
        ):
            if isinstance(stats, ShardError):
                return str(stats)
            if stats.waiting_for:
                waiting = ", ".join(stats.waiting_for)
                return f"sync barrier on shard {address} waiting on workers [{waiting}]"
        return None
