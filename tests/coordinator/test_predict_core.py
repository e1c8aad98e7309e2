"""A predict job in the scheduling core: events in, actions out, no sockets or threads.

Hypothesis drives a predict job through random interleavings of workers leasing, handing
partitions in, dying and coming back, and checks after every step: a partition is never
leased twice at once, nothing but PREDICT leases is handed out (a predict job owes no
evaluation), a dead worker's partition goes back to the pool, and the job finishes exactly
once, only after every partition was handed in.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pscluster.coordinator.core.actions import Action, FinishJob, SyncMembers
from pscluster.coordinator.core.job_plan import JobPlan
from pscluster.coordinator.core.kinds import TaskResult
from pscluster.coordinator.core.scheduler import Scheduler
from pscluster.coordinator.lease_values import PREDICT, TRAIN
from pscluster.coordinator.stragglers import StragglerSettings
from pscluster.errors import FailedPrecondition, InvalidArgument, NotFound

PARTITIONS, TIMEOUT = 5, 3.0
WORKERS = [f"w{i}" for i in range(4)]


def predict_plan(job_id: str = "p") -> JobPlan:
    return JobPlan(
        job_id,
        epochs=1,
        partitions=PARTITIONS,
        mode="async",
        stragglers=StragglerSettings.parse(0.0, 0.0, True, 0.0),
        kind=PREDICT,
    )


def scheduler() -> Scheduler:
    counter = itertools.count()
    core = Scheduler(TIMEOUT, progress_seconds=1.0, new_lease_id=lambda: f"l-{next(counter)}")
    core.add_job(predict_plan(), now=0.0)
    return core


class PredictMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = scheduler()
        self.now = 0.0
        self.actions: list[Action] = []
        self.handed_in: set[int] = set()  # partitions whose completion the core accepted

    @rule(worker=st.sampled_from(WORKERS))
    def register(self, worker: str) -> None:
        self.actions += self.core.register("h", 1, "cpu", worker, self.now)[1]

    @rule(worker=st.sampled_from(WORKERS))
    def acquire(self, worker: str) -> None:
        try:
            lease, actions = self.core.acquire(worker, self.now)
        except NotFound:
            return
        assert lease is None or lease.kind == PREDICT, "a predict job hands out nothing else"
        self.actions += actions

    @rule(worker=st.sampled_from(WORKERS))
    def hand_in(self, worker: str) -> None:
        lease = self.core.book.lease_of(worker)
        if lease is None:
            return
        try:
            actions = self.core.complete(
                worker, lease.lease_id, TaskResult(samples=7), self.now, self.now
            )
        except (NotFound, FailedPrecondition):
            return
        self.handed_in.add(lease.partition)
        self.actions += actions

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        self.core.heartbeat(worker, self.now)

    @rule(seconds=st.floats(0.1, 5.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        dead, actions = self.core.expire(self.now)
        self.actions += actions
        for worker in dead:
            assert self.core.book.lease_of(worker) is None, "a dead worker's lease comes back"

    @invariant()
    def a_partition_is_never_leased_twice_at_once(self) -> None:
        if not self.core.book.has_job("p"):
            return
        sched = self.core.book.schedule("p")
        units = [u.partition for u in [*sched.free, *sched.train_leases.values()]]
        assert len(units) == len(set(units))
        assert not set(units) & sched.done, "a partition done is never handed out again"
        assert set(units) | sched.done == set(range(PARTITIONS)) or sched.training_done

    @invariant()
    def no_member_and_no_membership_sync(self) -> None:
        assert not any(isinstance(a, SyncMembers) for a in self.actions)

    @invariant()
    def finishes_once_after_every_partition(self) -> None:
        finished = [a for a in self.actions if isinstance(a, FinishJob)]
        assert len(finished) <= 1
        if finished:
            assert self.handed_in == set(range(PARTITIONS))
            assert not self.core.book.has_job("p"), "nothing more is handed out"


TestPredictCore = PredictMachine.TestCase
TestPredictCore.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def test_a_predict_job_scored_to_the_end_finishes_once_with_no_evaluation() -> None:
    # Prepare
    core = scheduler()
    for w in "ab":
        core.register("h", 1, "cpu", w, 0.0)
    actions: list[Action] = []
    kinds: list[str] = []

    # Execute: two workers score whatever is handed out.
    for _ in range(PARTITIONS):
        for w in "ab":
            lease, got = core.acquire(w, 0.0)
            actions += got
            if lease is not None:
                kinds.append(lease.kind)
                actions += core.complete(w, lease.lease_id, TaskResult(samples=3), 0.0, 0.0)

    # Assert
    assert kinds == [PREDICT] * PARTITIONS
    assert actions.count(FinishJob("p")) == 1
    assert core.acquire("a", 0.0)[0] is None


def test_a_dead_workers_partition_is_leased_again_to_another() -> None:
    # Prepare: "a" holds partition 0 and dies.
    core = scheduler()
    for w in "ab":
        core.register("h", 1, "cpu", w, 0.0)
    held, _ = core.acquire("a", 0.0)
    assert held is not None

    # Execute: "b" keeps beating; "a" is silent past the timeout.
    core.heartbeat("b", TIMEOUT)
    dead, _ = core.expire(TIMEOUT + 0.5)
    again, _ = core.acquire("b", TIMEOUT + 0.5)

    # Assert: the same partition, to the live worker; the dead one cannot hand it in.
    assert dead == ["a"]
    assert again is not None and (again.kind, again.partition) == (PREDICT, held.partition)


def test_a_predict_job_beside_a_training_job_takes_part_in_nothing() -> None:
    # Prepare: a training job first in line, then the predict job.
    core = Scheduler(TIMEOUT, progress_seconds=1.0)
    train = JobPlan("t", 1, 1, mode="sync", stragglers=StragglerSettings())
    core.add_job(train, 0.0)
    core.add_job(predict_plan(), 0.0)
    for w in "ab":
        core.register("h", 1, "cpu", w, 0.0)

    # Execute
    first, _ = core.acquire("a", 0.0)
    second, actions = core.acquire("b", 0.0)

    # Assert: the predict holder is no member of either job's shards.
    assert first is not None and first.kind == TRAIN
    assert second is not None and second.kind == PREDICT
    assert SyncMembers("p") not in actions
    assert core.roster("t", 0.0) == (["a"], [])


def test_a_predict_result_without_rows_is_refused_and_changes_nothing() -> None:
    core = scheduler()
    core.register("h", 1, "cpu", "a", 0.0)
    lease, _ = core.acquire("a", 0.0)
    assert lease is not None
    with pytest.raises(InvalidArgument, match="rows"):
        core.complete("a", lease.lease_id, TaskResult(samples=0), 0.0, 0.0)
    assert core.book.lease_of("a") == lease
