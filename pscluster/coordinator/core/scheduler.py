"""The coordinator's scheduling core: leases, workers, stragglers and jobs, as plain objects.

Every method takes an event (a worker asked for work, handed a lease in, reported progress,
went silent; a job started or ended) with the time it happened, changes the in-memory state
and returns the actions to take: store writes, membership syncs, a job to finish or fail. No
sockets, threads, clocks or database: the caller holds one lock around each call and hands
the actions to the executor (:mod:`pscluster.coordinator.executor`), which performs them
outside the lock. So every rule here is unit- and property-testable, and the time a call
holds the lock is microseconds, whatever the shards or the disk are doing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pscluster.coordinator import store as st
from pscluster.coordinator.core.actions import Action, FinishJob, SyncMembers
from pscluster.coordinator.core.kinds import JobState, TaskResult, kind_of
from pscluster.coordinator.leases import Lease, LeaseBook
from pscluster.coordinator.relief import StragglerRelief
from pscluster.coordinator.stragglers import StragglerSettings
from pscluster.coordinator.workers import WorkerInfo, WorkerRegistry
from pscluster.coordinator.writes import (
    BatchesDropped,
    EventAppended,
    LeaseDropped,
    LeaseSaved,
    ProgressSaved,
    StepsAppended,
)
from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2


@dataclass
class Activity:
    """When a running job last moved, for the stall diagnosis (monotonic seconds)."""

    last_progress: float
    last_lease: float


@dataclass(frozen=True)
class JobPlan:
    """A job to schedule, with the progress a restarted coordinator resumes from."""

    job_id: str
    epochs: int
    partitions: int
    shards: int
    mode: str
    stragglers: StragglerSettings
    backup_workers: int = 0
    batch_counts: Sequence[int] | None = None
    epoch: int = 0
    done: Sequence[int] = ()
    evals: Sequence[int] = ()
    samples: int = 0


def lease_record(lease: Lease) -> st.LeaseRecord:
    return st.LeaseRecord(**asdict(lease))


class Scheduler:
    def __init__(
        self,
        worker_timeout: float,
        progress_seconds: float,
        new_lease_id: Callable[[], str] | None = None,
    ) -> None:
        self.book = LeaseBook(new_lease_id) if new_lease_id else LeaseBook()
        self.workers = WorkerRegistry(worker_timeout)
        self.relief = StragglerRelief(progress_seconds)
        self.jobs: dict[str, JobState] = {}
        self.activity: dict[str, Activity] = {}
        # Workers that handed a train lease in and have not asked for work since, by job:
        # still members on its shards, because most ask at once and take the job's next
        # unit, which then needs no membership change at all (two SetMembers rounds per
        # lease were most of the coordinator's shard traffic). Their next request, their
        # death or the job's end takes them out.
        self._between: dict[str, str] = {}

    # --- jobs ---
    def add_job(self, plan: JobPlan, now: float) -> None:
        """Start handing the job's work out (from where ``plan`` says it is)."""
        evals = set(plan.evals)
        if plan.epoch >= plan.epochs:
            evals.add(plan.epochs - 1)  # training is done, so the final evaluation is owed
        self.book.add_job(
            plan.job_id,
            plan.epochs,
            plan.partitions,
            epoch=plan.epoch,
            done=plan.done,
            evals=evals,
            batch_counts=plan.batch_counts,
        )
        self.relief.add_job(plan.job_id, plan.mode, plan.stragglers, plan.backup_workers)
        self.jobs[plan.job_id] = JobState(plan.job_id, plan.epochs, plan.shards, plan.samples)
        self.activity[plan.job_id] = Activity(now, now)

    def remove_job(
        self, job_id: str, reason: str, now: float
    ) -> tuple[list[Action], list[co_pb2.WorkerSpeed]]:
        """Stop scheduling the job: its leases are revoked (their holders hear ``reason``).
        Returns the writes and the workers' speeds as they ended (for its final metrics)."""
        revoked = self.book.remove_job(job_id, reason)
        for worker_id in [w for w, j in self._between.items() if j == job_id]:
            del self._between[worker_id]
        self.jobs.pop(job_id, None)
        self.activity.pop(job_id, None)
        speeds = self.relief.remove_job(job_id, now)
        return [LeaseDropped(lease.lease_id) for lease in revoked], speeds

    def stop_training(self, job_id: str) -> None:
        """The final evaluation is in: nothing more to hand out while the model is saved
        (the relief keeps the workers' speeds for the final metrics until remove_job)."""
        self.book.remove_job(job_id, "job completed")

    def evaluate_again(self, plan: JobPlan) -> list[Action]:
        """The saved model moved after its final evaluation: owe that evaluation again."""
        self.book.add_job(
            plan.job_id,
            plan.epochs,
            plan.partitions,
            epoch=plan.epochs,
            evals={plan.epochs - 1},
            batch_counts=plan.batch_counts,
        )
        return [self._progress(plan.job_id)]

    def restore_lease(self, lease: Lease, now: float, grace: float) -> bool:
        """After a restart: honour a lease granted before it (its holder kept training)."""
        if not self.book.restore(lease):
            return False
        self.workers.expect(lease.worker_id, now, grace)
        self.relief.granted(lease, now)
        return True

    # --- workers ---
    def register(
        self, host: str, pid: int, device: str, worker_id: str, now: float
    ) -> tuple[WorkerInfo, list[Action]]:
        info, replaced = self.workers.register(host, pid, device, now, worker_id)
        actions: list[Action] = []
        if replaced:  # a restarted process took the id over: the old one's lease is gone
            actions += self._gone(info.worker_id, now, f"worker {info.worker_id} re-registered")
        # A fresh start: the new process holds no lease, so there is no revocation to hear.
        self.book.forget_worker(info.worker_id)
        return info, actions

    def heartbeat(self, worker_id: str, now: float) -> tuple[bool, list[str]]:
        """(known, revoked lease ids); unknown workers must register again."""
        if not self.workers.touch(worker_id, now):
            return False, []
        return True, self.book.take_revoked(worker_id)

    def expire(self, now: float) -> tuple[list[str], list[Action]]:
        """Declare silent workers dead and return their leases to the pool."""
        dead, forgotten = self.workers.expire(now)
        actions: list[Action] = []
        for worker_id in dead:
            actions += self._gone(worker_id, now, f"worker {worker_id} timed out")
        for worker_id in forgotten:
            self.book.forget_worker(worker_id)
        return dead, actions

    # --- leases ---
    def acquire(self, worker_id: str, now: float) -> tuple[Lease | None, list[Action]]:
        """The worker's next lease (or None: nothing now), releasing the one it held."""
        self.workers.require(worker_id, now)
        actions = self._release(worker_id, now)
        was_member = self._between.pop(worker_id, None)
        lease = self.book.acquire(
            worker_id, lambda job_id: self.relief.share(job_id, worker_id, now)
        )
        if lease is None:
            lease, split = self._take_over(worker_id, now)
            actions += split
        member = None
        if lease is not None:
            self.activity[lease.job_id].last_lease = now
            self.relief.granted(lease, now)
            actions.append(LeaseSaved(lease_record(lease)))
            member = lease.job_id if kind_of(lease).takes_part else None
        # The membership changes only if the worker joins or leaves a job's members.
        if member is not None and member != was_member:
            actions.append(SyncMembers(member))
        if was_member is not None and was_member != member:
            actions.append(SyncMembers(was_member))
        return lease, _dedup(actions)

    def take_back(self, worker_id: str, lease_id: str, now: float) -> list[Action]:
        """Undo a grant whose membership did not reach the shards: the worker waits."""
        held = self.book.lease_of(worker_id)
        if held is None or held.lease_id != lease_id:
            return []
        return self._release(worker_id, now)

    def complete(
        self, worker_id: str, lease_id: str, result: TaskResult, now: float, wall: float
    ) -> list[Action]:
        self.workers.require(worker_id, now)
        held = self.book.lease_of(worker_id)
        if held is not None and held.lease_id == lease_id and held.job_id in self.jobs:
            kind_of(held).check(result, self.jobs[held.job_id])
        outcome = self.book.complete(worker_id, lease_id)
        lease = outcome.lease
        self.relief.ended(lease_id)
        job = self.jobs[lease.job_id]
        self.touch(lease.job_id, now)
        actions: list[Action] = [LeaseDropped(lease_id), self._progress(lease.job_id)]
        actions += kind_of(lease).completed(job, lease, outcome, result, wall)
        if kind_of(lease).takes_part:
            self._between[worker_id] = lease.job_id  # a member until it asks again
        if any(isinstance(a, FinishJob) for a in actions):
            self.stop_training(lease.job_id)
        return actions

    def report(
        self,
        worker_id: str,
        job_id: str,
        steps: Sequence[st.StepRecord],
        progress: co_pb2.LeaseProgress | None,
        now: float,
        wall: float,
        dropped: dict[str, int] | None = None,
    ) -> tuple[int, list[Action]]:
        """Steps, batches dropped and a lease's progress; returns the lease's end batch now
        (0: not this worker's train lease, or it runs to the end of its partition)."""
        self.workers.require(worker_id, now)
        job = self.jobs.get(job_id)
        if job is None:
            raise NotScheduled(job_id)
        for i, s in enumerate(steps):
            if s.epoch >= job.epochs:
                raise InvalidArgument(
                    f"steps[{i}].epoch={s.epoch} is out of range; the job has epochs "
                    f"0..{job.epochs - 1}"
                )
        actions: list[Action] = []
        if steps:
            job.samples += sum(s.samples for s in steps)
            self.touch(job_id, now)
            actions.append(StepsAppended(job_id, list(steps)))
        if dropped:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items()))
            message = (
                f"worker {worker_id} dropped {sum(dropped.values())} batch(es) without "
                f"training on them: {counts}"
            )
            actions.append(BatchesDropped(job_id, dict(dropped)))
            actions.append(_event(job_id, wall, "batches_dropped", worker_id, message))
        end = 0
        if progress is not None and progress.lease_id:
            end, more = self._lease_progress(worker_id, job_id, progress, now, wall)
            actions += more
        return end, actions

    def may_fail(self, worker_id: str, job_id: str, now: float) -> None:
        """Only a worker holding a lease on the job may report that it cannot run."""
        self.workers.require(worker_id, now)
        lease = self.book.lease_of(worker_id)
        if lease is None or lease.job_id != job_id:
            raise FailedPrecondition(
                f"worker {worker_id} holds no lease on job {job_id}; only a worker running "
                "the job may report that it cannot run"
            )

    def touch(self, job_id: str, now: float) -> None:
        act = self.activity.get(job_id)
        if act is not None:
            act.last_progress = now

    # --- internals ---
    def _progress(self, job_id: str) -> ProgressSaved:
        sched = self.book.schedule(job_id)
        return ProgressSaved(job_id, sched.epoch, sorted(sched.done), sched.owed_evals())

    def _gone(self, worker_id: str, now: float, revoke: str) -> list[Action]:
        """The worker's process is gone (dead, or replaced): its lease and membership too."""
        actions = self._release(worker_id, now, revoke)
        was_member = self._between.pop(worker_id, None)
        if was_member is not None:
            actions.append(SyncMembers(was_member))
        return _dedup(actions)

    def _release(self, worker_id: str, now: float, revoke: str | None = None) -> list[Action]:
        """Hand the worker's lease back, keeping the batches it reported."""
        held = self.book.lease_of(worker_id)
        if held is None:
            return []
        position = self.relief.position(held.lease_id)
        self.relief.ended(held.lease_id)
        self.book.release_worker(worker_id, revoke, position)
        actions: list[Action] = [LeaseDropped(held.lease_id)]
        if kind_of(held).takes_part:
            actions.append(SyncMembers(held.job_id))
        return actions

    def _take_over(self, worker_id: str, now: float) -> tuple[Lease | None, list[Action]]:
        """For a worker that found nothing free: cut a straggler's lease (or one past its
        deadline) short and lease the rest to this worker."""
        for job_id in self.book.job_ids():
            split = self.relief.pick_split(job_id, self.book.train_leases(job_id), worker_id, now)
            if split is None:
                continue
            rest = self.book.split(split.lease.lease_id, split.new_end)
            if rest is None:
                continue
            lease = self.book.acquire(worker_id)
            if lease is None:  # cannot happen: the rest was just put first in the pool
                return None, []
            shortened = self.book.lease(split.lease.lease_id)
            message = (
                f"{split.why}: batches [{rest.first}, {rest.end}) of partition "
                f"{rest.partition} (epoch {lease.epoch}) go to worker {worker_id}"
            )
            actions: list[Action] = [_event(job_id, now, "split", split.lease.worker_id, message)]
            if shortened is not None:
                actions.append(LeaseSaved(lease_record(shortened)))
            return lease, actions
        return None, []

    def _lease_progress(
        self, worker_id: str, job_id: str, progress: co_pb2.LeaseProgress, now: float, wall: float
    ) -> tuple[int, list[Action]]:
        lease = self.book.lease(progress.lease_id)
        if lease is not None and (lease.worker_id != worker_id or lease.job_id != job_id):
            lease = None  # not this worker's: its timings still count, its position does not
        actions: list[Action] = [
            _event(job_id, wall, c.kind, c.worker_id, c.message)
            for c in self.relief.on_progress(job_id, worker_id, lease, progress, now)
        ]
        change = self.relief.exclusion_changed(job_id, now)
        if change is not None:
            added, removed = change
            for w in added:
                actions.append(
                    _event(
                        job_id,
                        wall,
                        "excluded",
                        w,
                        f"worker {w} no longer holds back the ssp clock",
                    )
                )
            for w in removed:
                actions.append(
                    _event(job_id, wall, "included", w, f"worker {w} counts in the ssp clock again")
                )
            actions.append(SyncMembers(job_id))
        return (lease.end_batch if lease else 0), actions

    # --- reading (under the caller's lock) ---
    def roster(self, job_id: str, now: float) -> tuple[list[str], list[str]] | None:
        """(members, excluded members) the job's shards should hold; None if it is gone."""
        if not self.book.has_job(job_id) and job_id not in self.jobs:
            return None
        members = self.book.members(job_id)
        between = [w for w, j in self._between.items() if j == job_id]
        if between:
            members = sorted({*members, *between})
        excluded = self.relief.excluded(job_id, now)
        return members, [w for w in excluded if w in members]


class NotScheduled(FailedPrecondition):
    """The job is not running here (pending, ended, or unknown: the caller says which)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is not running; progress is no longer recorded")
        self.job_id = job_id


def _event(job_id: str, wall: float, kind: str, worker_id: str, message: str) -> EventAppended:
    return EventAppended(job_id, st.EventRecord(wall, kind, worker_id, message))


def _dedup(actions: list[Action]) -> list[Action]:
    """One membership sync per job is enough (the executor sends the latest roster)."""
    seen: set[str] = set()
    out: list[Action] = []
    for a in actions:
        if isinstance(a, SyncMembers):
            if a.job_id in seen:
                continue
            seen.add(a.job_id)
        out.append(a)
    return out
