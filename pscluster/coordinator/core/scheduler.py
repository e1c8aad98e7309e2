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

from pscluster.coordinator import store as st
from pscluster.coordinator.auto import AutoConsistency
from pscluster.coordinator.core.actions import (
    Action,
    FinishJob,
    SyncMembers,
    lease_saved,
    one_sync_per_job,
)
from pscluster.coordinator.core.auto_actions import observe
from pscluster.coordinator.core.job_plan import Activity, JobPlan, NotScheduled
from pscluster.coordinator.core.kinds import JobState, TaskResult, kind_of
from pscluster.coordinator.core.lingering import Lingering
from pscluster.coordinator.core.relief_actions import lease_progress, take_over
from pscluster.coordinator.core.worker_reports import batches_dropped, check_steps, steps_recorded
from pscluster.coordinator.lease_values import TRAIN, Lease
from pscluster.coordinator.leases import LeaseBook
from pscluster.coordinator.relief import StragglerRelief
from pscluster.coordinator.workers import WorkerInfo, WorkerRegistry
from pscluster.coordinator.writes import LeaseDropped, ProgressSaved
from pscluster.errors import FailedPrecondition
from pscluster.server.consistency import AUTO, mode_traits, starting_consistency
from pscluster.v1 import coordinator_pb2 as co_pb2


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
        # Members of a job between two of its train leases (see core.lingering).
        self.lingering = Lingering()
        # The consistency controllers of the jobs in mode "auto" (pscluster.coordinator.auto).
        self.auto: dict[str, AutoConsistency] = {}

    # --- jobs ---
    def add_job(self, plan: JobPlan, now: float) -> None:
        """Start handing the job's work out (from where ``plan`` says it is)."""
        evals = set(plan.evals)
        if plan.epoch >= plan.epochs and plan.kind == TRAIN:
            evals.add(plan.epochs - 1)  # training is done, so the final evaluation is owed
        self.book.add_job(
            plan.job_id,
            plan.epochs,
            plan.partitions,
            epoch=plan.epoch,
            done=plan.done,
            evals=evals,
            batch_counts=plan.batch_counts,
            unit_kind=plan.kind,
        )
        # An auto job starts in its first setting (its controller revises it as it runs).
        mode, _, backup_workers = starting_consistency(plan.mode, 0, plan.backup_workers)
        if plan.mode == AUTO and plan.kind == TRAIN:
            resumed = plan.samples > 0 or plan.epoch > 0 or bool(plan.done)
            self.auto[plan.job_id] = AutoConsistency(
                now, resumed=resumed, undoable=plan.undoable, local_steps=plan.local_steps
            )
        self.relief.add_job(plan.job_id, mode, plan.stragglers, backup_workers)
        traits = mode_traits(mode, backup_workers)
        if not traits.steps and not traits.clock_bound:
            self.lingering.allow_idle(plan.job_id)
        self.jobs[plan.job_id] = JobState(plan.job_id, plan.epochs, plan.samples)
        self.activity[plan.job_id] = Activity(now, now)

    def remove_job(
        self, job_id: str, reason: str, now: float
    ) -> tuple[list[Action], list[co_pb2.WorkerSpeed]]:
        """Stop scheduling the job: its leases are revoked (their holders hear ``reason``).
        Returns the writes and the workers' speeds as they ended (for its final metrics)."""
        revoked = self.book.remove_job(job_id, reason)
        self.lingering.drop_job(job_id)
        self.jobs.pop(job_id, None)
        self.auto.pop(job_id, None)
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

    def learn_batch_counts(self, job_id: str, counts: Sequence[int]) -> None:
        """A data source's sizes arrived (its first worker measured them): the job's leases
        are sized and split in batches from now on."""
        if self.book.has_job(job_id):
            self.book.schedule(job_id).learn_batch_counts(counts)

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
        was_member = self.lingering.leave(worker_id)
        lease = self.book.acquire(
            worker_id, lambda job_id: self.relief.share(job_id, worker_id, now)
        )
        if lease is None:
            lease, split = take_over(self.book, self.relief, worker_id, now)
            actions += split
        member = None
        if lease is not None:
            self.activity[lease.job_id].last_lease = now
            self.relief.granted(lease, now)
            actions.append(lease_saved(lease))
            member = lease.job_id if kind_of(lease).takes_part else None
        if member is None and was_member is not None and self.lingering.may_idle(was_member):
            self.lingering.stay(worker_id, was_member)  # idle, holding nobody back
            member = was_member
        # The membership changes only if the worker joins or leaves a job's members.
        if member is not None and member != was_member:
            actions.append(SyncMembers(member))
        if was_member is not None and was_member != member:
            actions.append(SyncMembers(was_member))
        return lease, one_sync_per_job(actions)

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
            self.lingering.stay(worker_id, lease.job_id)  # a member until it asks again
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
        check_steps(job, steps)
        actions = steps_recorded(job, steps)
        if steps:
            self.touch(job_id, now)
        actions += batches_dropped(job_id, worker_id, dropped or {}, wall)
        end = 0
        if progress is not None and progress.lease_id:
            end, more = lease_progress(
                self.book, self.relief, worker_id, job_id, progress, now, wall
            )
            actions += more
        auto = self.auto.get(job_id)
        if auto is not None:
            losses = [s.loss for s in steps]
            members = self.book.members(job_id)
            actions += observe(auto, self.relief, job_id, losses, members, progress, now, wall)
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
        was_member = self.lingering.leave(worker_id)
        if was_member is not None:
            actions.append(SyncMembers(was_member))
        return one_sync_per_job(actions)

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

    # --- reading (under the caller's lock) ---
    def roster(self, job_id: str, now: float) -> tuple[list[str], list[str]] | None:
        """(members, excluded members) the job's shards should hold; None if it is gone."""
        if not self.book.has_job(job_id) and job_id not in self.jobs:
            return None
        members = self.book.members(job_id)
        lingering = self.lingering.of_job(job_id)
        if lingering:
            members = sorted({*members, *lingering})
        excluded = self.relief.excluded(job_id, now)
        return members, [w for w in excluded if w in members]
