"""One job's epoch schedule: its units of work, the partitions done, the evaluations owed.

A train lease covers a *unit*: a run of batches ``[first, end)`` of one partition's batch
plan. An epoch starts with one unit per partition; a unit may be taken in part (a straggler
gets a share sized to its speed), cut short while it runs (the rest goes to a faster worker)
or given back with the batches done so far kept. A partition is done when none of its units
is left, free or leased, and the epoch closes when every partition is done.

Who holds which unit is the lease book's business (:mod:`pscluster.coordinator.leases`); this
module only keeps the units themselves straight. Pure logic, under the caller's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pscluster.errors import InvalidArgument


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
    # False: a job whose epochs owe no evaluation (a predict job scores its one epoch's
    # partitions and is done when the last one is).
    evaluates: bool = True

    @classmethod
    def resume(
        cls,
        job_id: str,
        epochs: int,
        partitions: int,
        *,
        epoch: int = 0,
        done: Iterable[int] = (),
        evals: Iterable[int] = (),
        batch_counts: Sequence[int] | None = None,
        evaluates: bool = True,
    ) -> Schedule:
        """A job's schedule from the progress given (none: a new job), its epoch's units
        free; InvalidArgument, naming the job, for progress that cannot be the job's."""
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
        if owed and not evaluates:
            raise InvalidArgument(f"job {job_id}: evaluations {owed} owed by a job without them")
        sched = cls(
            epochs, partitions, epoch, done_set, counts, evals_pending=owed, evaluates=evaluates
        )
        sched.start_epoch()
        return sched

    def start_epoch(self) -> None:
        """Every partition not done becomes one free unit."""
        counts = self.batch_counts
        self.free = [
            Unit(p, 0, counts[p] if counts else 0)
            for p in range(self.partitions)
            if p not in self.done
        ]

    def learn_batch_counts(self, counts: Sequence[int]) -> None:
        """The batches per partition, learned after the job started (a data source's sizes
        come from its first worker): units not leased get their end, and leases from now on
        can be sized and split. Units already leased stay whole partitions."""
        if len(counts) != self.partitions or any(c < 1 for c in counts):
            raise InvalidArgument(
                f"batch_counts {list(counts)} must give >= 1 batch for each of the "
                f"{self.partitions} partitions"
            )
        self.batch_counts = list(counts)
        self.free = [
            Unit(u.partition, u.first, counts[u.partition])
            if u.end == 0 and u.first < counts[u.partition]
            else u
            for u in self.free
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

    # --- units ---
    def take_free(self, fraction: float) -> Unit | None:
        """The first free unit to lease, or its first ``fraction`` (at least one batch; the
        rest stays first in line) when its size is known; None if nothing is free or the
        fraction is 0."""
        if not self.free or fraction <= 0.0:
            return None
        unit = self.free.pop(0)
        size = unit.size()
        if size is not None and size > 1 and fraction < 1.0:
            taken = max(1, int(size * fraction))
            if taken < size:
                self.free.insert(0, Unit(unit.partition, unit.first + taken, unit.end))
                unit = Unit(unit.partition, unit.first, unit.first + taken)
        return unit

    def give_back(self, lease_id: str, position: int) -> None:
        """The train lease's unit is free again from batch ``position`` on (the batches its
        holder reported done are kept)."""
        unit = self.train_leases.pop(lease_id, None)
        if unit is None:
            return
        # At least the last batch is redone: a unit given back never closes a partition, so
        # an epoch only closes on a completed lease.
        last = unit.end - 1 if unit.end else position
        first = max(unit.first, min(position, last))
        self.free.insert(0, Unit(unit.partition, first, unit.end))

    def cut(self, lease_id: str, unit: Unit, new_end: int) -> Unit:
        """The train lease's ``unit`` now ends at ``new_end``: the batches after it are a
        free unit (returned), first in line."""
        rest = Unit(unit.partition, new_end, unit.end)
        self.train_leases[lease_id] = Unit(unit.partition, unit.first, new_end)
        self.free.insert(0, rest)
        return rest

    def finish_unit(self, lease_id: str, partition: int) -> int | None:
        """The train lease's unit is done; the epoch it closed, if it did (its evaluation is
        then owed, and training moves on to the next epoch or stops)."""
        self.train_leases.pop(lease_id, None)
        if self.open_units(partition) == 0:
            self.done.add(partition)
        if len(self.done) < self.partitions:
            return None
        closed = self.epoch
        if self.evaluates:
            self.evals_pending = sorted({*self.evals_pending, closed})
        self.epoch += 1
        self.done = set()
        if not self.training_done:
            self.start_epoch()
        return closed

    def hold_again(self, lease_id: str, epoch: int, unit: Unit) -> bool:
        """After a restart: the train lease holds ``unit`` of ``epoch`` again; False if that
        no longer fits (another epoch, or batches no longer free)."""
        if epoch != self.epoch or self.training_done or not self.carve(unit):
            return False
        self.train_leases[lease_id] = unit
        return True

    # --- evaluations ---
    def owe_again(self, epoch: int) -> None:
        """An evaluation lease was given back: the epoch's evaluation is owed again."""
        self.eval_leases.pop(epoch, None)
        self.evals_pending = sorted({*self.evals_pending, epoch})

    def hold_eval_again(self, lease_id: str, epoch: int) -> bool:
        """After a restart: the lease holds ``epoch``'s evaluation again; False if it is no
        longer owed."""
        if epoch not in self.evals_pending:
            return False
        self.evals_pending.remove(epoch)
        self.eval_leases[epoch] = lease_id
        return True

    def carve(self, unit: Unit) -> bool:
        """Take ``unit`` out of the free unit of its partition that covers it (what is left
        either side stays free); False if no free unit covers it."""
        for i, free in enumerate(self.free):
            if free.partition != unit.partition or unit.first < free.first:
                continue
            if free.end and (not unit.end or unit.end > free.end):
                continue
            pieces = (
                [Unit(free.partition, free.first, unit.first)] if unit.first > free.first else []
            )
            if unit.end and unit.end != free.end:
                pieces.append(Unit(free.partition, unit.end, free.end))
            self.free[i : i + 1] = pieces
            return True
        return False
