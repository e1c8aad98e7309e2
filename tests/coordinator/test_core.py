"""The scheduling core on its own: events in, actions out, no sockets, threads or database.

Hypothesis drives a job through random interleavings of workers registering, leasing,
reporting, finishing, dying and coming back, and checks the invariants after every step: a
partition's batches are never leased twice at once, a dead worker's lease always comes back,
an epoch closes exactly once, and the job finishes exactly once.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pscluster.coordinator.core.actions import Action, FinishJob, SyncMembers
from pscluster.coordinator.core.job_plan import JobPlan, NotScheduled
from pscluster.coordinator.core.kinds import TaskResult
from pscluster.coordinator.core.scheduler import Scheduler
from pscluster.coordinator.lease_values import EVAL, TRAIN
from pscluster.coordinator.stragglers import StragglerSettings
from pscluster.coordinator.writes import EpochRecorded, LeaseDropped, LeaseSaved, ProgressSaved
from pscluster.errors import FailedPrecondition, InvalidArgument, NotFound
from pscluster.v1 import coordinator_pb2 as co_pb2

EPOCHS, PARTITIONS, BATCHES, TIMEOUT = 3, 4, 6, 3.0
WORKERS = [f"w{i}" for i in range(5)]


def scheduler(mode: str = "async") -> Scheduler:
    counter = itertools.count()
    core = Scheduler(TIMEOUT, progress_seconds=1.0, new_lease_id=lambda: f"l-{next(counter)}")
    plan = JobPlan(
        "j",
        EPOCHS,
        PARTITIONS,
        mode=mode,
        stragglers=StragglerSettings(),
        batch_counts=[BATCHES] * PARTITIONS,
    )
    core.add_job(plan, now=0.0)
    return core


def evaluation() -> TaskResult:
    return TaskResult(metrics={"loss": 0.5, "accuracy": 0.9}, versions=(3, 3))


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = scheduler()
        self.now = 0.0
        self.actions: list[Action] = []
        self.saved: dict[str, LeaseSaved] = {}  # what the store holds after the writes

    def _apply(self, actions: list[Action]) -> None:
        self.actions += actions
        for a in actions:
            if isinstance(a, LeaseSaved):
                self.saved[a.lease.lease_id] = a
            elif isinstance(a, LeaseDropped):
                self.saved.pop(a.lease_id, None)

    @rule(worker=st.sampled_from(WORKERS))
    def register(self, worker: str) -> None:
        _, actions = self.core.register("h", 1, "cpu", worker, self.now)
        self._apply(actions)

    @rule(worker=st.sampled_from(WORKERS))
    def acquire(self, worker: str) -> None:
        try:
            _, actions = self.core.acquire(worker, self.now)
        except NotFound:
            return
        self._apply(actions)

    @rule(worker=st.sampled_from(WORKERS), batches=st.integers(0, BATCHES))
    def report(self, worker: str, batches: int) -> None:
        lease = self.core.book.lease_of(worker)
        if lease is None or lease.kind != TRAIN:
            return
        progress = co_pb2.LeaseProgress(
            lease_id=lease.lease_id,
            position=min(lease.first_batch + batches, lease.end_batch),
            batches=batches,
            busy_seconds=0.01 * batches,
            step_seconds=0.01 * batches,
        )
        try:
            _, actions = self.core.report(worker, "j", [], progress, self.now, self.now)
        except (NotFound, NotScheduled):
            return
        self._apply(actions)

    @rule(worker=st.sampled_from(WORKERS))
    def complete(self, worker: str) -> None:
        lease = self.core.book.lease_of(worker)
        if lease is None:
            return
        result = evaluation() if lease.kind == EVAL else TaskResult(samples=10)
        try:
            actions = self.core.complete(worker, lease.lease_id, result, self.now, self.now)
        except (NotFound, FailedPrecondition):
            return
        self._apply(actions)

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        self.core.heartbeat(worker, self.now)

    @rule(seconds=st.floats(0.1, 5.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        dead, actions = self.core.expire(self.now)
        self._apply(actions)
        for worker in dead:
            assert self.core.book.lease_of(worker) is None, "a dead worker's lease comes back"

    @invariant()
    def batches_are_never_leased_twice_at_once(self) -> None:
        if not self.core.book.has_job("j"):
            return
        sched = self.core.book.schedule("j")
        covered: dict[int, set[int]] = {}
        units = [*sched.free, *sched.train_leases.values()]
        for unit in units:
            seen = covered.setdefault(unit.partition, set())
            batches = set(range(unit.first, unit.end))
            assert not seen & batches, f"partition {unit.partition}: {sorted(seen & batches)}"
            seen |= batches

    @invariant()
    def a_worker_holds_one_lease_and_the_store_knows_it(self) -> None:
        outstanding = self.core.book.outstanding()
        holders = [lease.worker_id for lease in outstanding]
        assert len(holders) == len(set(holders))
        assert {lease.lease_id for lease in outstanding} == set(self.saved)

    @invariant()
    def members_are_the_trainers_and_no_dead_worker(self) -> None:
        roster = self.core.roster("j", self.now)
        if roster is None:
            return
        members, _ = roster
        trainers = {
            lease.worker_id for lease in self.core.book.outstanding() if lease.kind == TRAIN
        }
        assert trainers <= set(members), "every trainer is a member before it pulls"
        alive = {w.worker_id for w in self.core.workers.snapshot() if w.alive}
        assert set(members) <= alive, "a dead worker holds no barrier back"

    @invariant()
    def epochs_close_once_each_in_order(self) -> None:
        epochs = [a.epoch for a in self.actions if isinstance(a, ProgressSaved)]
        assert all(b - a in (0, 1) for a, b in itertools.pairwise(epochs))
        recorded = [a.record.epoch for a in self.actions if isinstance(a, EpochRecorded)]
        assert len(recorded) == len(set(recorded)), "an epoch evaluated twice"
        finished = [a for a in self.actions if isinstance(a, FinishJob)]
        assert len(finished) <= 1
        if finished:
            assert sorted(recorded) == list(range(EPOCHS))


TestCore = CoreMachine.TestCase
TestCore.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_a_job_driven_to_the_end_finishes_once_and_saves_every_epoch() -> None:
    # Prepare
    core = scheduler()
    for w in ("a", "b"):
        core.register("h", 1, "cpu", w, 0.0)
    actions: list[Action] = []

    # Execute: two workers take and finish whatever is handed out.
    for _ in range(200):
        for w in ("a", "b"):
            lease, got = core.acquire(w, 0.0)
            actions += got
            if lease is not None:
                result = evaluation() if lease.kind == EVAL else TaskResult(samples=4)
                actions += core.complete(w, lease.lease_id, result, 0.0, 0.0)

    # Assert
    assert sum(isinstance(a, FinishJob) for a in actions) == 1
    assert sorted(a.record.epoch for a in actions if isinstance(a, EpochRecorded)) == [0, 1, 2]
    assert core.acquire("a", 0.0)[0] is None, "nothing more to hand out once finished"


def test_a_train_grant_asks_for_a_membership_sync_and_an_eval_grant_does_not() -> None:
    core = scheduler()
    core.register("h", 1, "cpu", "a", 0.0)
    lease, actions = core.acquire("a", 0.0)
    assert lease is not None and lease.kind == TRAIN
    assert SyncMembers("j") in actions and any(isinstance(a, LeaseSaved) for a in actions)
    assert core.roster("j", 0.0) == (["a"], [])


@pytest.mark.parametrize(("mode", "stays"), [("async", True), ("ssp", False), ("sync", False)])
def test_a_worker_with_nothing_to_do_stays_a_member_only_where_it_holds_nobody_back(
    mode: str, stays: bool
) -> None:
    # Prepare: "a" finished a unit; the other three units are leased to b, c and d.
    core = scheduler(mode)
    for w in "abcd":
        core.register("h", 1, "cpu", w, 0.0)
    first, _ = core.acquire("a", 0.0)
    assert first is not None
    core.complete("a", first.lease_id, TaskResult(samples=4), 0.0, 0.0)
    for w in "bcd":
        assert core.acquire(w, 0.0)[0] is not None

    # Execute: "a" asks and finds nothing free.
    lease, actions = core.acquire("a", 0.0)

    # Assert: async keeps it a member with no SyncMembers round; sync and ssp (a step or the
    # slowest clock would wait for it) take it out.
    assert lease is None
    roster = core.roster("j", 0.0)
    assert roster is not None
    assert ("a" in roster[0]) is stays
    assert (SyncMembers("j") in actions) is not stays


def test_the_job_finishes_after_every_evaluation_even_when_they_finish_out_of_order() -> None:
    # Prepare: "a" holds epoch 0's evaluation while "b" trains and evaluates the rest.
    core = scheduler()
    for w in "ab":
        core.register("h", 1, "cpu", w, 0.0)
    actions: list[Action] = []

    def run_epoch(worker: str) -> None:
        for _ in range(PARTITIONS):
            lease, _ = core.acquire(worker, 0.0)
            assert lease is not None and lease.kind == TRAIN
            actions.extend(core.complete(worker, lease.lease_id, TaskResult(samples=1), 0.0, 0.0))

    run_epoch("b")
    held, _ = core.acquire("a", 0.0)
    assert held is not None and (held.kind, held.epoch) == (EVAL, 0)
    for _ in range(EPOCHS - 1):
        run_epoch("b")
        lease, _ = core.acquire("b", 0.0)
        assert lease is not None and lease.kind == EVAL
        actions.extend(core.complete("b", lease.lease_id, evaluation(), 0.0, 0.0))
    assert not any(isinstance(a, FinishJob) for a in actions), "epoch 0 is still out"

    # Execute: the first epoch's evaluation comes in last.
    last = core.complete("a", held.lease_id, evaluation(), 0.0, 0.0)

    # Assert: every epoch recorded, and the job finished by the last evaluation to come in.
    recorded = [a.record.epoch for a in [*actions, *last] if isinstance(a, EpochRecorded)]
    assert sorted(recorded) == list(range(EPOCHS))
    assert sum(isinstance(a, FinishJob) for a in last) == 1


def test_an_evaluation_out_of_range_changes_nothing() -> None:
    # Prepare: one epoch's partitions done, its evaluation leased.
    core = scheduler()
    core.register("h", 1, "cpu", "a", 0.0)
    for _ in range(PARTITIONS):
        lease, _ = core.acquire("a", 0.0)
        assert lease is not None
        core.complete("a", lease.lease_id, TaskResult(samples=1), 0.0, 0.0)
    lease, _ = core.acquire("a", 0.0)
    assert lease is not None and lease.kind == EVAL

    # Execute / Assert
    bad = TaskResult(metrics={"loss": 1.0, "accuracy": 1.5}, versions=(1, 1))
    with pytest.raises(InvalidArgument, match="accuracy"):
        core.complete("a", lease.lease_id, bad, 0.0, 0.0)
    assert core.book.lease_of("a") == lease, "the lease still stands"
