"""Which partition or evaluation each worker holds, over every running job: pure logic.

Nothing here talks to a shard, a socket or a clock, so every rule of the schedule (one lease
per worker, evaluations before training, epochs closing, leases going back to the pool) is
unit-testable. The caller holds the coordinator lock around every call.

Each job's units of work and epochs are its :class:`~pscluster.coordinator.schedule.Schedule`;
this book hands them out as leases (:mod:`pscluster.coordinator.lease_values`), one per
worker, and takes them back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from pscluster.coordinator.lease_values import EVAL, TRAIN, UNIT_KINDS, Lease, Outcome
from pscluster.coordinator.revocations import Revocations
from pscluster.coordinator.schedule import Schedule, Unit
from pscluster.errors import FailedPrecondition, InvalidArgument

# Unit is imported from here by code that predates schedule.py.
__all__ = ["LeaseBook", "Schedule", "Unit"]


def _new_lease_id() -> str:
    return f"l-{uuid.uuid4().hex[:12]}"


class LeaseBook:
    """Leases over every running job; jobs are served first come, first served."""

    def __init__(self, new_id: Callable[[], str] = _new_lease_id) -> None:
        self._new_id = new_id
        self._jobs: dict[str, Schedule] = {}  # insertion order is submission order
        self._unit_kinds: dict[str, str] = {}  # what each job's units are leased as
        self._leases: dict[str, Lease] = {}
        self._by_worker: dict[str, str] = {}
        self._revoked = Revocations()
        # Bumped by every change to the outstanding leases.
        self.revision = 0
        # Bumped when work becomes available (a job added, a lease handed back or cut short,
        # an epoch closed); ``on_available`` is called then: the coordinator wakes the workers
        # waiting for a task. Only then: waking every waiter on every grant and completion
        # made hundreds of idle workers re-check for nothing at each epoch's end.
        self.available_revision = 0
        self.on_available: Callable[[], None] | None = None

    def _changed(self, available: bool = False) -> None:
        self.revision += 1
        if available:
            self.available_revision += 1
            if self.on_available is not None:
                self.on_available()

    # --- jobs ---
    def add_job(
        self,
        job_id: str,
        epochs: int,
        partitions: int,
        *,
        epoch: int = 0,
        done: Iterable[int] = (),
        evals: Iterable[int] = (),
        batch_counts: Sequence[int] | None = None,
        unit_kind: str = TRAIN,
    ) -> None:
        """Start scheduling a job, possibly from progress saved before a restart.

        ``batch_counts`` (batches per partition) lets train leases be sized and split;
        without them every lease is a whole partition. ``unit_kind`` PREDICT: the units are
        scoring leases and the job owes no evaluation.
        """
        if job_id in self._jobs:
            raise InvalidArgument(f"job {job_id} is already scheduled")
        if unit_kind not in UNIT_KINDS:
            raise InvalidArgument(f"unit kind {unit_kind!r} is unknown; expected {UNIT_KINDS}")
        self._jobs[job_id] = Schedule.resume(
            job_id,
            epochs,
            partitions,
            epoch=epoch,
            done=done,
            evals=evals,
            batch_counts=batch_counts,
            evaluates=unit_kind == TRAIN,
        )
        self._unit_kinds[job_id] = unit_kind
        self._changed(available=True)

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def schedule(self, job_id: str) -> Schedule:
        """The job's schedule (live object: read it under the caller's lock)."""
        return self._jobs[job_id]

    def remove_job(self, job_id: str, reason: str) -> list[Lease]:
        """Stop scheduling a job; its outstanding leases are revoked with ``reason``."""
        self._jobs.pop(job_id, None)
        self._unit_kinds.pop(job_id, None)
        revoked = [lease for lease in self._leases.values() if lease.job_id == job_id]
        for lease in revoked:
            self._drop(lease, reason)
        return revoked

    # --- leases ---
    def acquire(self, worker_id: str, share: Callable[[str], float] | None = None) -> Lease | None:
        """The next task for an idle worker: the oldest owed evaluation of the oldest job with
        one, else a free unit of its current epoch; None if no job has anything to hand out.

        ``share(job_id)`` in [0, 1] is the fraction of a unit this worker gets (a straggler's
        speed relative to the others): the rest of the unit stays free for someone faster.
        0: no training on that job for this worker now.
        """
        if worker_id in self._by_worker:
            raise FailedPrecondition(
                f"worker {worker_id} still holds lease {self._by_worker[worker_id]}; "
                "release it first"
            )
        for job_id, sched in self._jobs.items():
            if sched.evals_pending:
                epoch = sched.evals_pending.pop(0)
                lease = Lease(self._new_id(), job_id, worker_id, EVAL, epoch, -1, sched.partitions)
                sched.eval_leases[epoch] = lease.lease_id
                return self._hold(lease)
            if sched.training_done:
                continue
            fraction = share(job_id) if share is not None else 1.0
            unit = sched.take_free(fraction)
            if unit is not None:
                return self._grant_unit(job_id, worker_id, sched, unit)
        return None

    def split(self, lease_id: str, new_end: int) -> Unit | None:
        """Cut a running train lease short at batch ``new_end``: the batches after it become a
        free unit (returned) for another worker. None if there is nothing to hand on."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.kind != TRAIN or not lease.end_batch:
            return None
        sched = self._jobs.get(lease.job_id)
        if sched is None or lease_id not in sched.train_leases:
            return None
        new_end = max(new_end, lease.first_batch + 1)
        if new_end >= lease.end_batch:
            return None
        self._leases[lease_id] = replace(lease, end_batch=new_end)
        self._changed(available=True)
        held = Unit(lease.partition, lease.first_batch, lease.end_batch)
        return sched.cut(lease_id, held, new_end)

    def train_leases(self, job_id: str) -> list[Lease]:
        """The job's running train leases."""
        sched = self._jobs.get(job_id)
        return [] if sched is None else [self._leases[i] for i in sched.train_leases]

    def lease(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def release_worker(
        self, worker_id: str, revoke_reason: str | None = None, position: int = 0
    ) -> Lease | None:
        """Return the worker's lease to the pool (train: its unit is free again from batch
        ``position`` on, the batches the worker reported done; eval: the evaluation is owed
        again). With ``revoke_reason`` the worker is told why if it comes back.
        """
        lease_id = self._by_worker.get(worker_id)
        if lease_id is None:
            return None
        lease = self._leases[lease_id]
        sched = self._jobs.get(lease.job_id)
        if sched is not None:
            if lease.kind != EVAL:
                sched.give_back(lease_id, position)
            else:
                sched.owe_again(lease.epoch)
        self._changed(available=True)
        if revoke_reason is None:
            del self._leases[lease_id]
            del self._by_worker[worker_id]
        else:
            self._drop(lease, revoke_reason)
        return lease

    def complete(self, worker_id: str, lease_id: str) -> Outcome:
        lease = self._leases.get(lease_id)
        if lease is None:
            reason = self._revoked.reason(lease_id, "no such lease")
            raise FailedPrecondition(f"lease {lease_id} is no longer valid: {reason}")
        if lease.worker_id != worker_id:
            raise FailedPrecondition(
                f"lease {lease_id} is no longer valid: it belongs to worker {lease.worker_id}, "
                f"not {worker_id}"
            )
        sched = self._jobs[lease.job_id]  # a lease of a removed job was revoked with it
        self._changed()
        del self._leases[lease_id]
        del self._by_worker[worker_id]
        if lease.kind != EVAL:
            closed = sched.finish_unit(lease_id, lease.partition)
            if closed is None:
                return Outcome(lease)
            # The epoch closed: its evaluation is owed, and the next epoch's units are free
            # (a job without evaluations is finished once its last epoch closed).
            self._changed(available=True)
            return Outcome(lease, epoch_closed=closed, final=self._over(sched))
        sched.eval_leases.pop(lease.epoch, None)
        # Final once training is done and no evaluation is owed or out: evaluations of
        # different epochs may finish out of order, and the job must not end (and refuse the
        # late one) with an epoch unrecorded.
        return Outcome(lease, final=self._over(sched))

    def outstanding(self) -> list[Lease]:
        """Every lease held now, in grant order (what a restarted coordinator restores)."""
        return list(self._leases.values())

    def restore(self, lease: Lease) -> bool:
        """Hold ``lease`` again after a restart, so that the worker training on it keeps it.

        Call right after :meth:`add_job` restored the job's progress. False (nothing changed)
        if the lease no longer fits it: another epoch, a partition since done, an evaluation
        no longer owed, or a worker or lease already holding another.
        """
        sched = self._jobs.get(lease.job_id)
        if sched is None or lease.lease_id in self._leases or lease.worker_id in self._by_worker:
            return False
        if lease.kind == EVAL:
            if not sched.hold_eval_again(lease.lease_id, lease.epoch):
                return False
        else:
            unit = Unit(lease.partition, lease.first_batch, lease.end_batch)
            if not sched.hold_again(lease.lease_id, lease.epoch, unit):
                return False
        self._hold(lease)
        return True

    def lease_of(self, worker_id: str) -> Lease | None:
        lease_id = self._by_worker.get(worker_id)
        return None if lease_id is None else self._leases[lease_id]

    def members(self, job_id: str) -> list[str]:
        """Workers training on the job: the membership its shards' barriers and clocks use."""
        return sorted(
            lease.worker_id
            for lease in self._leases.values()
            if lease.job_id == job_id and lease.kind == TRAIN
        )

    def holders(self, job_id: str) -> list[str]:
        """Workers holding any lease on the job."""
        return sorted(lease.worker_id for lease in self._leases.values() if lease.job_id == job_id)

    def take_revoked(self, worker_id: str) -> list[str]:
        """Leases of this worker revoked since the last call (told once, in a heartbeat)."""
        return self._revoked.take(worker_id)

    def forget_worker(self, worker_id: str) -> None:
        """Drop what is kept for a worker that will never come back."""
        self._revoked.forget_worker(worker_id)

    # --- internals ---
    @staticmethod
    def _over(sched: Schedule) -> bool:
        return sched.training_done and not sched.owed_evals()

    def _hold(self, lease: Lease) -> Lease:
        self._leases[lease.lease_id] = lease
        self._by_worker[lease.worker_id] = lease.lease_id
        self._changed()
        return lease

    def _grant_unit(self, job_id: str, worker_id: str, sched: Schedule, unit: Unit) -> Lease:
        lease = Lease(
            self._new_id(),
            job_id,
            worker_id,
            self._unit_kinds[job_id],
            sched.epoch,
            unit.partition,
            sched.partitions,
            unit.first,
            unit.end,
        )
        sched.train_leases[lease.lease_id] = unit
        return self._hold(lease)

    def _drop(self, lease: Lease, reason: str) -> None:
        self._changed()
        self._leases.pop(lease.lease_id, None)
        if self._by_worker.get(lease.worker_id) == lease.lease_id:
            del self._by_worker[lease.worker_id]
        self._revoked.add(lease.lease_id, lease.worker_id, reason)
