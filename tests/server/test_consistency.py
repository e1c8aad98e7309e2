"""The consistency modes on real jobs (no sockets): sync barriers, ssp bounds, async."""

from __future__ import annotations

import pytest
import torch

from pscluster.errors import DeadlineExceeded, InvalidArgument
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.consistency import (
    MODES,
    SSPPolicy,
    SyncPolicy,
    clock_bound,
    make_policy,
    mode_traits,
)
from pscluster.server.domain import JobConfig, Outcome, PushHeader, PushResult
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from tests.server.pulls import BackgroundPull

F32 = common_pb2.DTYPE_FLOAT32
LENGTH = 4


def make_job(mode: str, staleness: int = 0) -> ShardJob:
    config = JobConfig("j", 0, LENGTH, mode, staleness, OptimizerSpec("sgd", lr=1.0))
    return ShardJob(config, torch.zeros(LENGTH))


def push(
    job: ShardJob,
    worker: str,
    value: float,
    seq: int,
    base_version: int = 0,
    base_clock: int | None = None,
) -> PushResult:
    """A push; by default computed on the shard's current clock (a worker that just pulled)."""
    clock = job.clock if base_clock is None else base_clock
    header = PushHeader("j", worker, seq, base_version, clock, LENGTH, F32)
    return job.push(header, [wire.encode(torch.full((LENGTH,), value))])


def param(job: ShardJob) -> float:
    with job.pull("", 0, F32, timeout=1) as snap:
        return float(torch.frombuffer(bytearray(snap.to_bytes()), dtype=torch.float32)[0])


def test_registry_knows_the_modes_and_refuses_others() -> None:
    assert set(MODES) == {"async", "sync", "ssp"}
    assert isinstance(make_policy("sync"), SyncPolicy)
    ssp = make_policy("ssp", 3)
    assert isinstance(ssp, SSPPolicy) and ssp.staleness == 3
    with pytest.raises(InvalidArgument, match=r"mode 'hogwild' is not supported; expected one of"):
        make_policy("hogwild", 0)


# --- sync ---


def test_sync_buffers_until_every_member_pushed_then_applies_the_average() -> None:
    job = make_job("sync")
    job.set_members(["w1", "w2", "w3"], 1)

    r1 = push(job, "w1", 1.0, seq=1)
    r2 = push(job, "w2", 2.0, seq=1)
    assert (r1.outcome, r2.outcome) == (Outcome.BUFFERED, Outcome.BUFFERED)
    assert job.version == 0 and param(job) == 0.0
    assert job.stats().waiting_for == ["w3"]

    r3 = push(job, "w3", 6.0, seq=1)

    assert r3 == PushResult(Outcome.APPLIED, version=1, clock=1, next_version=1)
    assert (r1.next_version, r2.next_version) == (1, 1)  # the step closes at version 1
    assert param(job) == -3.0  # lr 1 x mean(1, 2, 6)
    stats = job.stats()
    assert (stats.steps_applied, stats.pushes_applied, stats.staleness) == (1, 3, {0: 3})
    assert stats.waiting_for == ["w1", "w2", "w3"]  # the next step is open


def test_sync_pull_waits_for_the_barrier_and_says_on_whom() -> None:
    job = make_job("sync")
    job.set_members(["w1", "w2"], 1)
    push(job, "w1", 1.0, seq=1)
    with pytest.raises(
        DeadlineExceeded, match=r"sync barrier for step 0 waiting on workers \['w2'\]"
    ):
        job.pull("w1", 1, F32, timeout=0.2)

    waiter = BackgroundPull(job, "w1", min_version=1)
    waiter.wait_held()
    push(job, "w2", 1.0, seq=1)
    waiter.join()
    assert waiter.version == 1


def test_sync_refuses_stale_and_double_pushes() -> None:
    job = make_job("sync")
    job.set_members(["w1"], 1)
    push(job, "w1", 1.0, seq=1)  # step 0 applied, version 1

    stale = push(job, "w1", 1.0, seq=2, base_version=0)
    assert stale.outcome is Outcome.STALE and "pull the current parameters" in stale.reason
    assert job.stats().pushes_rejected == {"stale": 1}

    job.set_members(["w1", "w2"], 2)
    assert push(job, "w1", 1.0, seq=3, base_version=1).outcome is Outcome.BUFFERED
    twice = push(job, "w1", 1.0, seq=4, base_version=1)

    # Assert: an outcome, not an error; the step keeps the first push, the worker's next pull
    # waits for the step to close
    assert twice.outcome is Outcome.ALREADY_PUSHED and twice.next_version == 2
    assert "already pushed for step 1; pull min_version=2" in twice.reason
    assert job.version == 1 and param(job) == -1.0
    assert job.stats().pushes_rejected == {"stale": 1, "already_pushed": 1}
    assert job.stats().worker_clocks["w1"] == 2  # the refused push moved no clock


def test_sync_membership_change_completes_an_open_barrier() -> None:
    job = make_job("sync")
    job.set_members(["w1", "w2", "w3"], 1)
    push(job, "w1", 2.0, seq=1)
    push(job, "w2", 4.0, seq=1)

    job.set_members(["w1", "w2"], 2)  # w3 died: the others have all pushed

    assert job.version == 1 and param(job) == -3.0
    assert job.stats().steps_applied == 1


def test_sync_adding_a_member_makes_the_barrier_wait_for_it() -> None:
    job = make_job("sync")
    job.set_members(["w1"], 1)
    job.set_members(["w1", "w2"], 2)
    assert push(job, "w1", 1.0, seq=1).outcome is Outcome.BUFFERED
    assert job.stats().waiting_for == ["w2"]
    assert push(job, "w2", 3.0, seq=1).outcome is Outcome.APPLIED
    assert param(job) == -2.0


# --- ssp ---


def test_ssp_pull_blocks_beyond_the_bound_until_the_slowest_catches_up() -> None:
    s = 2
    job = make_job("ssp", staleness=s)
    job.set_members(["fast", "slow"], 1)
    for seq in range(1, s + 2):  # fast runs s + 1 clocks ahead
        assert push(job, "fast", 0.0, seq=seq, base_clock=0).outcome is Outcome.APPLIED

    with pytest.raises(
        DeadlineExceeded,
        match="ssp bound s=2: worker fast is at clock 3, 3 ahead of the slowest worker slow at "
        "clock 0",
    ):
        job.pull("fast", 0, F32, timeout=0.2)
    job.pull("slow", 0, F32, timeout=1).payload.release()  # the slow one is never held back

    waiter = BackgroundPull(job, "fast")
    waiter.wait_held()
    push(job, "slow", 0.0, seq=1, base_clock=0)
    waiter.join()
    assert waiter.clock == 1
    stats = job.stats()
    assert stats.max_clock_lead == s and stats.worker_clocks == {"fast": 3, "slow": 1}


def test_ssp_refuses_pushes_older_than_the_bound() -> None:
    job = make_job("ssp", staleness=1)
    job.set_members(["a", "b"], 1)
    for seq in (1, 2, 3):
        push(job, "a", 0.0, seq=seq)
        push(job, "b", 0.0, seq=seq)
    assert job.clock == 3

    refused = push(job, "a", 1.0, seq=4, base_version=0, base_clock=1)
    accepted = push(job, "a", 1.0, seq=5, base_version=6, base_clock=2)

    assert refused.outcome is Outcome.STALE and "ssp bound is 1" in refused.reason
    assert accepted.outcome is Outcome.APPLIED
    stats = job.stats()
    assert stats.pushes_rejected == {"stale": 1}
    assert max(stats.clock_staleness) <= 1 and stats.clock_staleness[1] == 1
    assert stats.worker_clocks["a"] == 4  # a refused push does not advance the clock


def test_ssp_joining_worker_starts_at_the_slowest_clock_and_leavers_are_forgotten() -> None:
    job = make_job("ssp", staleness=0)
    job.set_members(["a", "b"], 1)
    for seq in range(1, 6):
        push(job, "a", 0.0, seq=seq)
    for seq in range(1, 4):
        push(job, "b", 0.0, seq=seq)
    job.set_members(["a", "b", "c"], 2)
    assert job.stats().worker_clocks == {"a": 5, "b": 3, "c": 3}
    job.pull("c", 0, F32, timeout=1).payload.release()  # not behind: it does not stall anyone

    job.set_members(["a", "c"], 3)  # b leaves: the minimum is now c's
    assert job.clock == 3 and "b" not in job.stats().worker_clocks
    job.set_members([], 4)
    assert job.clock == 3  # an empty set keeps the last clock
    job.set_members(["b"], 5)
    assert job.stats().worker_clocks == {"b": 3}


# --- async ---


def test_async_applies_every_push_and_measures_staleness() -> None:
    job = make_job("async")
    job.set_members(["a", "b"], 1)
    push(job, "a", 1.0, seq=1, base_version=0)
    push(job, "b", 1.0, seq=1, base_version=0)  # computed on version 0, applied at version 1
    push(job, "a", 1.0, seq=2, base_version=0)
    stats = job.stats()
    assert stats.version == 3 and param(job) == -3.0
    assert stats.staleness == {0: 1, 1: 1, 2: 1}
    assert stats.waiting_for == [] and stats.steps_applied == 0


def test_traits_say_what_each_mode_means_outside_the_shards() -> None:
    # Execute
    plain, backup = mode_traits("sync"), mode_traits("sync", backup_workers=2)
    ssp, asynchronous = mode_traits("ssp"), mode_traits("async")

    # Assert
    assert plain.steps and plain.step_waits_for_all and plain.waits_for_version
    assert backup.steps and not backup.step_waits_for_all and backup.waits_for_version
    assert ssp.clock_bound and ssp.excludable and not ssp.steps
    assert not any((asynchronous.steps, asynchronous.clock_bound, asynchronous.excludable))
    assert [m for m in MODES if mode_traits(m).takes_backup_workers] == ["sync"]
    assert clock_bound("ssp") and not clock_bound("sync") and not clock_bound("from-the-future")
    with pytest.raises(InvalidArgument, match="mode 'bsp' is not supported"):
        mode_traits("bsp")
