"""Stragglers and staleness on real jobs (no sockets): sync with backup workers, the
staleness-aware learning rate, and ssp with excluded stragglers."""

from __future__ import annotations

import pytest
import torch

from pscluster.errors import DeadlineExceeded, InvalidArgument
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.consistency import (
    BackupSyncPolicy,
    SyncPolicy,
    make_policy,
    validate_consistency,
)
from pscluster.server.domain import JobConfig, Outcome, PushHeader, PushResult
from pscluster.server.shard import Shard
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from tests.server.pulls import BackgroundPull

F32 = common_pb2.DTYPE_FLOAT32
LENGTH = 4


def make_job(
    mode: str,
    *,
    staleness: int = 0,
    backup_workers: int = 0,
    staleness_aware_lr: bool = False,
    lr: float = 1.0,
    initial: torch.Tensor | None = None,
) -> ShardJob:
    config = JobConfig(
        "j",
        0,
        LENGTH,
        mode,
        staleness,
        OptimizerSpec("sgd", lr=lr),
        backup_workers=backup_workers,
        staleness_aware_lr=staleness_aware_lr,
    )
    return ShardJob(config, torch.zeros(LENGTH) if initial is None else initial.clone())


def push(
    job: ShardJob,
    worker: str,
    grad: float | torch.Tensor,
    seq: int,
    base_version: int = 0,
    base_clock: int | None = None,
) -> PushResult:
    """A push; by default computed on the shard's current clock (a worker that just pulled)."""
    clock = job.clock if base_clock is None else base_clock
    values = torch.full((LENGTH,), grad) if isinstance(grad, float) else grad
    header = PushHeader("j", worker, seq, base_version, clock, LENGTH, F32)
    return job.push(header, [wire.encode(values)])


def values(job: ShardJob) -> torch.Tensor:
    with job.pull("", 0, F32, timeout=1) as snap:
        return wire.decode(bytearray(snap.to_bytes()), F32, LENGTH)


def pull_clock(job: ShardJob, worker: str, timeout: float = 1.0) -> int:
    with job.pull(worker, 0, F32, timeout=timeout) as snap:
        return snap.clock


# --- sync with backup workers ---


def test_backup_workers_close_a_step_without_the_slowest_and_drop_its_late_push() -> None:
    job = make_job("sync", backup_workers=1)
    job.set_members(["w1", "w2", "w3", "w4"], 1)

    assert push(job, "w1", 1.0, seq=1).outcome is Outcome.BUFFERED
    assert push(job, "w2", 2.0, seq=1).outcome is Outcome.BUFFERED
    assert job.stats().waiting_for == ["w3", "w4"]
    third = push(job, "w3", 6.0, seq=1)
    late = push(job, "w4", 100.0, seq=1, base_version=0)

    assert third == PushResult(Outcome.APPLIED, version=1, clock=0, next_version=1)
    assert late.outcome is Outcome.LATE and late.version == 1 and late.next_version == 0
    assert "step 0 closed without this push" in late.reason
    assert "go on with the next batch" in late.reason
    assert torch.equal(values(job), torch.full((LENGTH,), -3.0))  # mean(1, 2, 6), not w4's
    stats = job.stats()
    assert stats.pushes_rejected == {"late": 1}
    assert (stats.pushes_received, stats.pushes_applied, stats.steps_applied) == (4, 3, 1)
    assert stats.worker_clocks == {"w1": 1, "w2": 1, "w3": 1, "w4": 0}  # late: no clock tick
    # A retry of the late push gets the same answer, and is not counted again.
    again = push(job, "w4", 100.0, seq=1, base_version=0)
    assert again.duplicate and again.outcome is Outcome.LATE
    assert job.stats().pushes_rejected == {"late": 1}
    # The late worker takes part in the next step as any other.
    assert push(job, "w4", 1.0, seq=2, base_version=1).outcome is Outcome.BUFFERED


def test_without_backup_workers_sync_still_waits_for_all_and_refuses_old_pushes_as_stale() -> None:
    assert type(make_policy("sync", 0, 0)) is SyncPolicy
    job = make_job("sync", backup_workers=0)
    job.set_members(["w1", "w2", "w3"], 1)
    for worker in ("w1", "w2"):
        assert push(job, worker, 1.0, seq=1).outcome is Outcome.BUFFERED
    assert push(job, "w3", 1.0, seq=1).outcome is Outcome.APPLIED
    old = push(job, "w1", 1.0, seq=2, base_version=0)
    assert old.outcome is Outcome.STALE and job.stats().pushes_rejected == {"stale": 1}


def test_a_member_leaving_can_close_a_backup_step() -> None:
    job = make_job("sync", backup_workers=1)
    job.set_members(["w1", "w2", "w3", "w4"], 1)  # a step needs 3 pushes
    push(job, "w1", 2.0, seq=1)
    push(job, "w2", 4.0, seq=1)

    job.set_members(["w1", "w2", "w3"], 2)  # w4 left: 2 pushes close the step

    assert job.version == 1 and torch.equal(values(job), torch.full((LENGTH,), -3.0))
    assert job.stats().steps_applied == 1


def test_more_backup_workers_than_members_still_needs_one_push() -> None:
    job = make_job("sync", backup_workers=5)
    job.set_members(["w1", "w2"], 1)
    assert push(job, "w1", 2.0, seq=1).outcome is Outcome.APPLIED
    assert push(job, "w2", 2.0, seq=1, base_version=0).outcome is Outcome.LATE


def test_a_pull_waiting_on_a_backup_step_says_how_many_pushes_it_needs() -> None:
    job = make_job("sync", backup_workers=1)
    job.set_members(["w1", "w2", "w3"], 1)
    push(job, "w1", 1.0, seq=1)
    with pytest.raises(DeadlineExceeded, match=r"1 of the 2 pushes it needs are in"):
        job.pull("w1", 1, F32, timeout=0.1)


@pytest.mark.parametrize(
    ("mode", "staleness", "backup", "message"),
    [
        ("async", 0, 1, "backup_workers=1 needs mode 'sync' but the mode is 'async'"),
        ("ssp", 2, 3, "set backup_workers to 0 or use mode 'sync'"),
        ("sync", 0, -1, "backup_workers must be >= 0, got -1"),
        ("ssp", -1, 0, "staleness .* must be >= 0, got -1"),
        ("bsp", 0, 0, "mode 'bsp' is not supported"),
    ],
)
def test_consistency_settings_that_do_not_fit_are_invalid(
    mode: str, staleness: int, backup: int, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_consistency(mode, staleness, backup)
    with pytest.raises(InvalidArgument, match=message):
        make_policy(mode, staleness, backup)
    shard = Shard()
    config = JobConfig("k", 0, 2, mode, staleness, OptimizerSpec("sgd", lr=1.0), "none", backup)
    with pytest.raises(InvalidArgument, match=message):
        shard.init_job(config, [bytes(8)])
    assert shard.job_ids() == []


def test_the_settings_that_fit_make_their_policy() -> None:
    validate_consistency("sync", 0, 2)
    validate_consistency("ssp", 3, 0)
    policy = make_policy("sync", 0, 2)
    assert isinstance(policy, BackupSyncPolicy) and policy.backup_workers == 2


# --- staleness-aware learning rate ---


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_staleness_aware_lr_divides_a_stale_gradient_by_its_staleness_plus_one(
    mode: str,
) -> None:
    gen = torch.Generator().manual_seed(7)
    initial = torch.randn(LENGTH, generator=gen)
    grads = [torch.randn(LENGTH, generator=gen) for _ in range(3)]
    job = make_job(mode, staleness=10, staleness_aware_lr=True, lr=0.5, initial=initial)
    plain = make_job(mode, staleness=10, lr=0.5, initial=initial)
    reference = torch.nn.Parameter(initial.clone())
    opt = torch.optim.SGD([reference], lr=0.5)
    for j in (job, plain):
        j.set_members(["a", "b", "c"], 1)

    # All three computed on version 0: applied at versions 0, 1, 2 (staleness 0, 1, 2).
    for tau, (worker, grad) in enumerate(zip(["a", "b", "c"], grads, strict=True)):
        for j in (job, plain):
            assert push(j, worker, grad.clone(), seq=1, base_version=0).version == tau + 1
        reference.grad = grad / (tau + 1)
        opt.step()

    assert torch.equal(values(job), reference.detach())
    assert not torch.equal(values(plain), reference.detach())  # the scaling is what made it
    assert job.stats().staleness == {0: 1, 1: 1, 2: 1}


def test_staleness_aware_lr_leaves_sync_steps_alone() -> None:
    job = make_job("sync", staleness_aware_lr=True)
    job.set_members(["w1", "w2"], 1)
    push(job, "w1", 1.0, seq=1)
    push(job, "w2", 3.0, seq=1)
    push(job, "w1", 2.0, seq=2, base_version=1)
    push(job, "w2", 2.0, seq=2, base_version=1)
    assert torch.equal(values(job), torch.full((LENGTH,), -4.0))


# --- ssp with excluded stragglers ---


def ssp_with_a_straggler(s: int = 1) -> ShardJob:
    """Members fast1, fast2 at clock 2 and slow at clock 0 (ssp bound ``s``)."""
    job = make_job("ssp", staleness=s)
    job.set_members(["fast1", "fast2", "slow"], 1)
    for seq in (1, 2):
        for worker in ("fast1", "fast2"):
            assert push(job, worker, 1.0, seq=seq, base_clock=0).outcome is Outcome.APPLIED
    return job


def test_excluding_a_straggler_lets_the_others_pull_and_still_bounds_its_pushes() -> None:
    job = ssp_with_a_straggler(s=1)
    with pytest.raises(DeadlineExceeded, match="2 ahead of the slowest worker slow"):
        job.pull("fast1", 0, F32, timeout=0.1)
    waiter = BackgroundPull(job, "fast1")
    waiter.wait_held()

    job.set_members(["fast1", "fast2", "slow"], 2, excluded=["slow"])

    waiter.join()
    assert waiter.clock == 2 and job.clock == 2
    assert job.stats().excluded == ["slow"]
    before = values(job)
    old = push(job, "slow", 1.0, seq=1, base_clock=0)  # 0 + s < 2: beyond the bound
    assert old.outcome is Outcome.STALE and "ssp bound is 1" in old.reason
    assert torch.equal(values(job), before) and job.stats().pushes_rejected == {"stale": 1}
    # Its next pull brings it up to the shard clock; what it computes on that is applied.
    assert pull_clock(job, "slow") == 2 and job.stats().worker_clocks["slow"] == 2
    assert push(job, "slow", 1.0, seq=2, base_clock=2).outcome is Outcome.APPLIED
    assert job.stats().excluded == ["slow"]  # still excluded: the coordinator says so


def test_a_straggler_asked_back_in_counts_again_once_caught_up_and_the_clock_never_drops() -> None:
    job = ssp_with_a_straggler(s=1)
    job.set_members(["fast1", "fast2", "slow"], 2, excluded=["slow"])
    clocks = [job.clock]

    job.set_members(["fast1", "fast2", "slow"], 3, excluded=[])  # taken off the list
    clocks.append(job.clock)
    assert job.stats().excluded == ["slow"]  # still behind: not counted yet
    assert pull_clock(job, "fast1") == 2  # so it still holds nobody up

    assert pull_clock(job, "slow") == 2  # its pull raises it to the clock: it re-enters
    clocks.append(job.clock)
    assert job.stats().excluded == [] and job.stats().worker_clocks["slow"] == 2
    for worker, seq in (("fast1", 3), ("fast2", 3), ("fast1", 4)):
        push(job, worker, 1.0, seq=seq, base_clock=2)
        clocks.append(job.clock)
    # Counted again: fast1 at 4 is 2 ahead of slow at 2 (beyond s = 1); fast2 is at 3.
    with pytest.raises(DeadlineExceeded, match="ahead of the slowest worker slow at clock 2"):
        job.pull("fast1", 0, F32, timeout=0.1)
    assert clocks == sorted(clocks) and clocks[0] == 2


def test_excluded_ids_must_be_members_and_a_bad_request_changes_nothing() -> None:
    job = ssp_with_a_straggler()
    with pytest.raises(InvalidArgument, match=r"\['ghost'\] are not in worker_ids"):
        job.set_members(["fast1", "fast2", "slow"], 2, excluded=["ghost"])
    stats = job.stats()
    assert stats.excluded == [] and stats.clock == 0 and stats.members == ["fast1", "fast2", "slow"]


def test_exclusion_decides_nothing_in_async_mode() -> None:
    job = make_job("async")
    job.set_members(["a", "b"], 1, excluded=["b"])
    assert job.stats().excluded == ["b"]
    assert push(job, "b", 1.0, seq=1, base_version=0).outcome is Outcome.APPLIED
    assert pull_clock(job, "b") == 0 and pull_clock(job, "a") == 0
