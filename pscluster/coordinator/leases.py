"""Which partition or evaluation each worker holds: the per-job epoch schedule, pure logic.

Nothing here talks to a shard, a socket or a clock, so every rule of the schedule (one lease
per worker, evaluations before training, epochs closing, leases going back to the pool) is
unit-testable. The caller holds the coordinator lock around every call.

A train lease covers a *unit*: a run of batches ``[first, end)`` of one partition's batch
plan. An epoch starts with one unit per partition; a unit may be leased in part (a straggler
gets a share sized to its speed), cut short while it runs (the rest goes to a faster worker)
or handed back with the batches done so far kept. A partition is done when none of its units
is left, free or leased, and the epoch closes when every partition is done.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from pscluster.errors import FailedPrecondition, InvalidArgument

TRAIN = "train"
EVAL = "eval"
# Revocation reasons are kept so that a late CompleteTask hears why its lease is gone; a bound
# keeps a long-running coordinator's memory flat.
_MAX_REVOKED = 10_000


@dataclass(frozen=True)
class Lease:
    lease_id: str
    job_id: str
    worker_id: str
    kind: str  # TRAIN | EVAL
    epoch: int
    partition: int  # -1 for an evaluation
    partitions: int
    first_batch: int = 0  # train: the batches [first_batch, end_batch) of the partition
    end_batch: int = 0  # 0: to the end of the partition (its size is not known)


@dataclass(frozen=True)
class Unit:
    """Batches ``[first, end)`` of a partition's plan; ``end`` 0: to the plan's end."""

    partition: int
    first: int
    end: int

    def size(self) -> int | None:
        return self.end - self.first if self.end else None


@dataclass
class Schedule:
    """One job's progress: the current epoch, its units of work and the evaluations owed."""

    epochs: int
    partitions: int
    epoch: int = 0
    done: set[int] = field(default_factory=set)
    batch_counts: list[int] | None = None  # batches per partition, if known
    free: list[Unit] = field(default_factory=list)  # not leased, not done, in order
    train_leases: dict[str, Unit] = field(default_factory=dict)  # lease id -> unit
    evals_pending: list[int] = field(default_factory=list)  # epochs, not leased, sorted
    eval_leases: dict[int, str] = field(default_factory=dict)  # epoch -> lease id

    def start_epoch(self) -> None:
        """Every partition not done becomes one free unit."""
        counts = self.batch_counts
        self.free = [
            Unit(p, 0, counts[p] if counts else 0)
            for p in range(self.partitions)
            if p not in self.done
        ]

    def open_units(self, partition: int) -> int:
        return sum(u.partition == partition for u in self.free) + sum(
            u.partition == partition for u in self.train_leases.values()
        )

    @property
    def training_done(self) -> bool:
        return self.epoch >= self.epochs

    def partitions_done(self) -> int:
        """Partitions completed over the whole job (for JobInfo.progress)."""
        return min(self.epoch, self.epochs) * self.partitions + len(self.done)

    def owed_evals(self) -> list[int]:
        """Evaluations still to be made, leased or not (what survives a restart)."""
        return sorted({*self.evals_pending, *self.eval_leases})


@dataclass(frozen=True)
class Outcome:
    """What a completed lease changed: the epoch it closed, or the end of the job."""

    lease: Lease
    epoch_closed: int | None = None  # train: every partition of this epoch is now done
    final: bool = False  # eval: this was the last epoch's evaluation; the job is finished


def _new_lease_id() -> str:
    return f"l-{uuid.uuid4().hex[:12]}"


class LeaseBook:
    """Leases over every running job; jobs are served first come, first served."""

    def __init__(self, new_id: Callable[[], str] = _new_lease_id) -> None:
        self._new_id = new_id
        self._jobs: dict[str, Schedule] = {}  # insertion order is submission order
        self._leases: dict[str, Lease] = {}
        self._by_worker: dict[str, str] = {}
        self._revoked: OrderedDict[str, str] = OrderedDict()  # lease id -> reason
        self._revoked_by_worker: dict[str, list[str]] = {}
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
    ) -> None:
        """Start scheduling a job, possibly from progress saved before a restart.

        ``batch_counts`` (batches per partition) lets train leases be sized and split;
        without them every lease is a whole partition.
        """
        if job_id in self._jobs:
            raise InvalidArgument(f"job {job_id} is already scheduled")
        if epochs < 1 or partitions < 1:
            raise InvalidArgument(
                f"job {job_id}: epochs ({epochs}) and partitions ({partitions}) must be >= 1"
            )
        if not 0 <= epoch <= epochs:
            raise InvalidArgument(f"job {job_id}: epoch {epoch} is outside 0..{epochs}")
        done_set = set(done)
        if any(not 0 <= p < partitions for p in done_set) or (epoch == epochs and done_set):
            raise InvalidArgument(f"job {job_id}: done partitions {sorted(done_set)} are invalid")
        owed = sorted(set(evals))
        if any(not 0 <= e < epochs for e in owed):
            raise InvalidArgument(f"job {job_id}: evaluations {owed} are outside 0..{epochs - 1}")
        counts = list(batch_counts) if batch_counts is not None else None
        if counts is not None and (len(counts) != partitions or any(c < 1 for c in counts)):
            raise InvalidArgument(
                f"job {job_id}: batch_counts {counts} must give >= 1 batch for each of the "
                f"{partitions} partitions"
            )
        sched = Schedule(epochs, partitions, epoch, done_set, counts, evals_pending=owed)
        sched.start_epoch()
        self._jobs[job_id] = sched
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
                lease = self._grant(job_id, worker_id, EVAL, epoch, -1, sched.partitions)
                sched.eval_leases[epoch] = lease.lease_id
                return lease
            if sched.training_done:
                continue
            fraction = share(job_id) if share is not None else 1.0
            if sched.free and fraction > 0.0:
                unit = sched.free.pop(0)
                size = unit.size()
                if size is not None and size > 1 and fraction < 1.0:
                    taken = max(1, int(size * fraction))
                    if taken < size:
                        sched.free.insert(0, Unit(unit.partition, unit.first + taken, unit.end))
                        unit = Unit(unit.partition, unit.first, unit.first + taken)
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
        rest = Unit(lease.partition, new_end, lease.end_batch)
        shorter = replace(lease, end_batch=new_end)
        self._leases[lease_id] = shorter
        self._changed(available=True)
        sched.train_leases[lease_id] = Unit(lease.partition, lease.first_batch, new_end)
        sched.free.insert(0, rest)
        return rest

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
            if lease.kind == TRAIN:
                unit = sched.train_leases.pop(lease_id, None)
                if unit is not None:
                    # At least the last batch is redone: a released unit never closes a
                    # partition, so an epoch only closes on a completed lease.
                    last = unit.end - 1 if unit.end else position
                    first = max(unit.first, min(position, last))
                    sched.free.insert(0, Unit(unit.partition, first, unit.end))
            else:
                sched.eval_leases.pop(lease.epoch, None)
                sched.evals_pending = sorted({*sched.evals_pending, lease.epoch})
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
            reason = self._revoked.get(lease_id, "no such lease")
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
        if lease.kind == TRAIN:
            sched.train_leases.pop(lease_id, None)
            if sched.open_units(lease.partition) == 0:
                sched.done.add(lease.partition)
            if len(sched.done) < sched.partitions:
                return Outcome(lease)
            # The epoch closes: its evaluation is owed, and training moves on (or stops).
            self._changed(available=True)
            closed = sched.epoch
            sched.evals_pending = sorted({*sched.evals_pending, closed})
            sched.epoch += 1
            sched.done = set()
            if not sched.training_done:
                sched.start_epoch()
            return Outcome(lease, epoch_closed=closed)
        sched.eval_leases.pop(lease.epoch, None)
        final = sched.training_done and lease.epoch == sched.epochs - 1
        return Outcome(lease, final=final)

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
            if lease.epoch not in sched.evals_pending:
                return False
            sched.evals_pending.remove(lease.epoch)
            sched.eval_leases[lease.epoch] = lease.lease_id
        else:
            if lease.epoch != sched.epoch or sched.training_done:
                return False
            unit = Unit(lease.partition, lease.first_batch, lease.end_batch)
            if not self._carve(sched, unit):
                return False
            sched.train_leases[lease.lease_id] = unit
        self._leases[lease.lease_id] = lease
        self._by_worker[lease.worker_id] = lease.lease_id
        self._changed()
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
        return self._revoked_by_worker.pop(worker_id, [])

    def forget_worker(self, worker_id: str) -> None:
        """Drop what is kept for a worker that will never come back."""
        self._revoked_by_worker.pop(worker_id, None)

    # --- internals ---
    def _grant(
        self,
        job_id: str,
        worker_id: str,
        kind: str,
        epoch: int,
        partition: int,
        partitions: int,
        first_batch: int = 0,
        end_batch: int = 0,
    ) -> Lease:
        lease = Lease(
            self._new_id(),
            job_id,
            worker_id,
            kind,
            epoch,
            partition,
            partitions,
            first_batch,
            end_batch,
        )
        self._leases[lease.lease_id] = lease
        self._by_worker[worker_id] = lease.lease_id
        self._changed()
        return lease

    def _grant_unit(self, job_id: str, worker_id: str, sched: Schedule, unit: Unit) -> Lease:
        lease = self._grant(
            job_id,
            worker_id,
            TRAIN,
            sched.epoch,
            unit.partition,
            sched.partitions,
            unit.first,
            unit.end,
        )
        sched.train_leases[lease.lease_id] = unit
        return lease

    @staticmethod
    def _carve(sched: Schedule, unit: Unit) -> bool:
        """Take ``unit`` out of the free unit of its partition that covers it (what is left
        either side stays free); False if no free unit covers it."""
        for i, free in enumerate(sched.free):
            if free.partition != unit.partition or unit.first < free.first:
                continue
            if free.end and (not unit.end or unit.end > free.end):
                continue
            pieces = (
                [Unit(free.partition, free.first, unit.first)] if unit.first > free.first else []
            )
            if unit.end and unit.end != free.end:
                pieces.append(Unit(free.partition, unit.end, free.end))
            sched.free[i : i + 1] = pieces
            return True
        return False

    def _drop(self, lease: Lease, reason: str) -> None:
        self._changed()
        self._leases.pop(lease.lease_id, None)
        if self._by_worker.get(lease.worker_id) == lease.lease_id:
            del self._by_worker[lease.worker_id]
        self._revoked[lease.lease_id] = reason
        while len(self._revoked) > _MAX_REVOKED:
            self._revoked.popitem(last=False)
        self._revoked_by_worker.setdefault(lease.worker_id, []).append(lease.lease_id)
