"""Which partition or evaluation each worker holds: the per-job epoch schedule, pure logic.

Nothing here talks to a shard, a socket or a clock, so every rule of the schedule (one lease
per worker, evaluations before training, epochs closing, leases going back to the pool) is
unit-testable. The caller holds the coordinator lock around every call.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pscluster.transport.errors import FailedPrecondition, InvalidArgument

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


@dataclass
class Schedule:
    """One job's progress: the current epoch, its partitions and the evaluations owed."""

    epochs: int
    partitions: int
    epoch: int = 0
    done: set[int] = field(default_factory=set)
    train_leases: dict[int, str] = field(default_factory=dict)  # partition -> lease id
    evals_pending: list[int] = field(default_factory=list)  # epochs, not leased, sorted
    eval_leases: dict[int, str] = field(default_factory=dict)  # epoch -> lease id

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
    ) -> None:
        """Start scheduling a job, possibly from progress saved before a restart."""
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
        self._jobs[job_id] = Schedule(epochs, partitions, epoch, done_set, {}, owed, {})

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
    def acquire(self, worker_id: str) -> Lease | None:
        """The next task for an idle worker: the oldest owed evaluation of the oldest job with
        one, else a free partition of its current epoch; None if no job has anything to hand out.
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
            free = self._free_partition(sched)
            if free is not None:
                lease = self._grant(job_id, worker_id, TRAIN, sched.epoch, free, sched.partitions)
                sched.train_leases[free] = lease.lease_id
                return lease
        return None

    def release_worker(self, worker_id: str, revoke_reason: str | None = None) -> Lease | None:
        """Return the worker's lease to the pool (train: the partition is free again; eval: the
        evaluation is owed again). With ``revoke_reason`` the worker is told why if it comes back.
        """
        lease_id = self._by_worker.get(worker_id)
        if lease_id is None:
            return None
        lease = self._leases[lease_id]
        sched = self._jobs.get(lease.job_id)
        if sched is not None:
            if lease.kind == TRAIN:
                sched.train_leases.pop(lease.partition, None)
            else:
                sched.eval_leases.pop(lease.epoch, None)
                sched.evals_pending = sorted({*sched.evals_pending, lease.epoch})
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
        del self._leases[lease_id]
        del self._by_worker[worker_id]
        if lease.kind == TRAIN:
            sched.train_leases.pop(lease.partition, None)
            sched.done.add(lease.partition)
            if len(sched.done) < sched.partitions:
                return Outcome(lease)
            # The epoch closes: its evaluation is owed, and training moves on (or stops).
            closed = sched.epoch
            sched.evals_pending = sorted({*sched.evals_pending, closed})
            sched.epoch += 1
            sched.done = set()
            return Outcome(lease, epoch_closed=closed)
        sched.eval_leases.pop(lease.epoch, None)
        final = sched.training_done and lease.epoch == sched.epochs - 1
        return Outcome(lease, final=final)

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
        self, job_id: str, worker_id: str, kind: str, epoch: int, partition: int, partitions: int
    ) -> Lease:
        lease = Lease(self._new_id(), job_id, worker_id, kind, epoch, partition, partitions)
        self._leases[lease.lease_id] = lease
        self._by_worker[worker_id] = lease.lease_id
        return lease

    @staticmethod
    def _free_partition(sched: Schedule) -> int | None:
        for p in range(sched.partitions):
            if p not in sched.done and p not in sched.train_leases:
                return p
        return None

    def _drop(self, lease: Lease, reason: str) -> None:
        self._leases.pop(lease.lease_id, None)
        if self._by_worker.get(lease.worker_id) == lease.lease_id:
            del self._by_worker[lease.worker_id]
        self._revoked[lease.lease_id] = reason
        while len(self._revoked) > _MAX_REVOKED:
            self._revoked.popitem(last=False)
        self._revoked_by_worker.setdefault(lease.worker_id, []).append(lease.lease_id)
