"""A job's part in a live re-layout (the coordinator's ScaleShards): held, released, moved.

The coordinator moves a running job's ranges between shards only while the job is between two
steps everywhere: it *holds* the job on every old shard, so that each member's next pull waits
here (pushes still land: a member finishing its step must be able to push, or it never comes
to pull), and polls until no member is in the middle of a step: each waits in a pull, or has
pushed since its last pull (a member between two leases does not come back without pulling,
and that pull waits here). Then the state is exported, recut and adopted
elsewhere; the old shards are told the job *moved* (their waiting pulls, and every later
request, answer "layout moved": the worker fetches the plan again), or *released* (the move
rolled back: the pulls go on as if nothing happened).

One gate per :class:`~pscluster.server.shard_job.ShardJob`, sharing its lock (a Condition): a
pull's wait here is the same wait as its consistency wait, so a pull that is released goes
straight on to the mode's checks, and one that is moved leaves whatever it waited for.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pscluster.errors import FailedPrecondition, LayoutMoved

# What a held pull is waiting for, in its DeadlineExceeded when it gives up.
HELD_FOR_MOVE = "a layout move (the job is held on this shard)"


class HoldAction(enum.Enum):
    HOLD = "hold"
    RELEASE = "release"
    MOVED = "moved"
    SETTLED = "settled"  # the move is committed: the copy an adoption retired goes


@dataclass(frozen=True)
class HoldStatus:
    """What HoldJob answers: whether the job is between two steps here yet."""

    members: list[str]
    waiting: list[str]  # members between two steps here: held in a pull, or pushed since
    version: int
    layout_generation: int


class LayoutGate:
    """``cond`` is the job's lock; every method takes it (it is re-entrant)."""

    def __init__(self, cond: threading.Condition, job_id: str, generation: int) -> None:
        self._cond = cond
        self.job_id = job_id
        self.generation = generation  # the job's layout generation here (its config's)
        self.held = False
        self.moved_to: int | None = None  # set once the job left this shard
        self._waiting: Counter[str] = Counter()  # member -> its pulls held here now
        # Members in the middle of a step: their pull was granted, their push not decided.
        self._in_step: set[str] = set()

    def check(self, requested: int) -> None:
        """A request that names the layout generation of its plan (0: not checked). One of an
        older generation is fenced off: its plan sends it to ranges that moved. One of a
        newer generation goes on: the coordinator names a shard in a newer plan only with the
        range it holds (a move rolled back while this shard was down keeps it where it was,
        under the next generation)."""
        with self._cond:
            self.check_open()
            if requested and requested < self.generation:
                raise LayoutMoved(
                    self.job_id,
                    self.generation,
                    f"is at layout generation {self.generation} here, not {requested}",
                )

    def check_open(self) -> None:
        """LayoutMoved once the job left this shard (every request, every waiting pull)."""
        if self.moved_to is not None:
            raise LayoutMoved(
                self.job_id, self.moved_to, f"moved to layout generation {self.moved_to}"
            )

    def check_held(self) -> None:
        """ExportJob reads a job only between two steps: after HOLD, before RELEASE."""
        if not self.held:
            raise FailedPrecondition(
                f"job {self.job_id} is not held on this shard: HoldJob(HOLD) it, and wait "
                "until every member waits, before exporting its state"
            )

    def hold(self, on: bool) -> None:
        """HOLD (``on``) or RELEASE; either wakes the pulls, to wait here or to go on."""
        with self._cond:
            self.check_open()
            self.held = on
            self._cond.notify_all()

    def move(self, generation: int) -> None:
        """The job left this shard for ``generation``: its waiting pulls give up."""
        with self._cond:
            self.moved_to = generation
            self.held = False
            self._cond.notify_all()

    def began_step(self, worker_id: str) -> None:
        """A member's pull was granted (call under the job's lock)."""
        self._in_step.add(worker_id)

    def ended_step(self, worker_id: str) -> None:
        """A member's push was decided, whatever the outcome (call under the job's lock)."""
        self._in_step.discard(worker_id)

    def status(self, members: list[str], version: int) -> HoldStatus:
        """Who of ``members`` is between two steps here: waiting in a held pull, or not in
        a step at all (idle between leases, or pushed and not pulled since)."""
        with self._cond:
            between = [m for m in members if m in self._waiting or m not in self._in_step]
        return HoldStatus(members, sorted(between), version, self.generation)

    @contextmanager
    def pull(self, worker_id: str) -> Iterator[PullAtGate]:
        """One pull's place at the gate while it waits: counted among the waiting while the
        gate holds it, and no longer once it leaves, however it leaves (granted, timed out,
        cancelled, moved)."""
        place = PullAtGate(self, worker_id, self._waiting)
        try:
            yield place
        finally:
            with self._cond:
                place.count(False)


class PullAtGate:
    """Call under the job's lock."""

    def __init__(self, gate: LayoutGate, worker_id: str, waiting: Counter[str]) -> None:
        self._gate = gate
        self._worker_id = worker_id
        self._waiting = waiting  # the gate's
        self._counted = False

    def blocker(self) -> str | None:
        """What the pull waits for at the gate (None: nothing). An observer's read (no
        ``worker_id``) is never held: it takes no part in a step."""
        held = bool(self._worker_id) and self._gate.held
        self.count(held)
        return HELD_FOR_MOVE if held else None

    def count(self, waiting: bool) -> None:
        if waiting == self._counted:
            return
        self._counted = waiting
        self._waiting[self._worker_id] += 1 if waiting else -1
        if self._waiting[self._worker_id] <= 0:
            del self._waiting[self._worker_id]
