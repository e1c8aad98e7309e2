"""A job's logic without sockets: validation, idempotence, membership, isolation."""

from __future__ import annotations

import time

import pytest
import torch

from pscluster.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushHeader, PushResult
from pscluster.server.shard import Shard
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from tests.server.pulls import BackgroundPull

F32 = common_pb2.DTYPE_FLOAT32
LENGTH = 6


def make_job(mode: str = "async", staleness: int = 0, job_id: str = "j") -> ShardJob:
    config = JobConfig(job_id, 10, LENGTH, mode, staleness, OptimizerSpec("sgd", lr=0.5))
    return ShardJob(config, torch.arange(LENGTH, dtype=torch.float32))


def push(
    job: ShardJob,
    worker: str,
    grad: torch.Tensor,
    seq: int,
    base_version: int = 0,
    *,
    dtype: int = F32,
    length: int = LENGTH,
) -> PushResult:
    header = PushHeader(job.config.job_id, worker, seq, base_version, 0, length, dtype)
    return job.push(header, [wire.encode(grad, dtype)])


def values(job: ShardJob) -> torch.Tensor:
    with job.pull("", 0, F32, timeout=1) as snap:
        return wire.decode(bytearray(snap.to_bytes()), F32, LENGTH)


def test_push_applies_sgd_and_counts() -> None:
    job = make_job()
    job.set_members(["w1"], 1)

    result = push(job, "w1", torch.ones(LENGTH), seq=1)

    assert result == PushResult(Outcome.APPLIED, version=1, clock=1)
    assert torch.equal(values(job), torch.arange(LENGTH, dtype=torch.float32) - 0.5)
    stats = job.stats()
    assert (stats.pushes_received, stats.pushes_applied, stats.bytes_pushed) == (1, 1, 24)
    assert stats.staleness == {0: 1} and stats.worker_clocks == {"w1": 1}


def test_a_retried_push_is_answered_from_memory_and_applied_once() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    first = push(job, "w1", torch.ones(LENGTH), seq=7)

    again = push(job, "w1", torch.ones(LENGTH), seq=7)
    older = push(job, "w1", torch.ones(LENGTH), seq=3)

    assert again.duplicate and again.outcome is Outcome.APPLIED and again.version == first.version
    assert older.duplicate and older.outcome is Outcome.UNKNOWN and "older" in older.reason
    assert job.stats().pushes_applied == 1 and job.version == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gradient_is_refused_and_changes_nothing(bad: float) -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    before = job.checksum()
    grad = torch.ones(LENGTH)
    grad[3] = bad

    with pytest.raises(InvalidArgument, match="NaN or Inf"):
        push(job, "w1", grad, seq=1)

    stats = job.stats()
    assert stats.checksum == before and stats.version == 0
    assert stats.pushes_rejected == {"nonfinite": 1} and stats.worker_clocks == {"w1": 0}
    # The seq was not used up: the corrected push with the same seq is applied.
    assert push(job, "w1", torch.ones(LENGTH), seq=1).outcome is Outcome.APPLIED


def test_huge_but_finite_gradient_is_not_mistaken_for_inf() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    assert push(job, "w1", torch.full((LENGTH,), 3e38), seq=1).outcome is Outcome.APPLIED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(length=LENGTH + 1), "announces 7 values but job j holds 6"),
        (dict(dtype=9), "unknown dtype 9"),
    ],
)
def test_malformed_header_is_invalid(kwargs: dict[str, int], message: str) -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    header = PushHeader("j", "w1", 1, 0, 0, kwargs.get("length", LENGTH), kwargs.get("dtype", F32))
    with pytest.raises(InvalidArgument, match=message):
        job.push(header, [bytes(4 * LENGTH)])
    assert job.stats().pushes_rejected == {"invalid": 1}
    assert job.version == 0


@pytest.mark.parametrize(
    ("chunks", "message"),
    [([bytes(20)], "ended after 20 of the announced 24"), ([bytes(24), b"x"], "more than")],
)
def test_payload_of_the_wrong_size_is_invalid(chunks: list[bytes], message: str) -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    before = job.checksum()
    with pytest.raises(InvalidArgument, match=message):
        job.push(PushHeader("j", "w1", 1, 0, 0, LENGTH, F32), chunks)
    assert job.checksum() == before and job.stats().pushes_rejected == {"invalid": 1}


def test_push_needs_a_worker_id_and_a_version_that_exists() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    with pytest.raises(InvalidArgument, match="no worker_id"):
        push(job, "", torch.ones(LENGTH), seq=1)
    with pytest.raises(InvalidArgument, match="base_version 5 is ahead"):
        push(job, "w1", torch.ones(LENGTH), seq=1, base_version=5)
    assert job.version == 0 and job.stats().pushes_rejected == {"invalid": 2}


def test_non_members_cannot_push_or_pull_but_observers_can_read() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    with pytest.raises(NotFound, match="worker w9 is not a member of job j: it holds no lease"):
        push(job, "w9", torch.ones(LENGTH), seq=1)
    with pytest.raises(NotFound, match="not a member"):
        job.pull("w9", 0, F32, timeout=1)
    assert job.stats().pushes_rejected == {"not_member": 1}
    with job.pull("", 0, F32, timeout=1) as snap:  # an observer: no membership needed
        assert snap.length == LENGTH and snap.start == 10


def test_set_members_ignores_older_generations_and_refuses_bad_ids() -> None:
    job = make_job()
    assert job.set_members(["a", "b"], 5) == 5
    assert job.set_members(["c"], 4) == 5
    assert job.members == ["a", "b"]
    with pytest.raises(InvalidArgument, match="empty id"):
        job.set_members(["a", ""], 6)
    with pytest.raises(InvalidArgument, match="duplicates"):
        job.set_members(["a", "a"], 6)
    assert job.members == ["a", "b"]


def test_pull_gives_up_at_its_deadline_saying_what_it_waited_for() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    started = time.monotonic()
    with pytest.raises(
        DeadlineExceeded, match=r"waiting for version 3 \(the shard is at version 0\)"
    ):
        job.pull("w1", 3, F32, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5


def test_dropping_a_job_or_removing_the_worker_ends_its_waiting_pulls() -> None:
    job = make_job()
    job.set_members(["w1", "w2"], 1)
    first = BackgroundPull(job, "w1", min_version=1)
    first.wait_held()
    job.set_members(["w2"], 2)
    first.join()
    assert isinstance(first.error, NotFound)

    second = BackgroundPull(job, "w2", min_version=1)
    second.wait_held()
    job.drop()
    second.join()
    assert isinstance(second.error, NotFound) and "dropped" in str(second.error)


def test_jobs_are_isolated_a_blocked_job_does_not_hold_up_another() -> None:
    shard = Shard()
    spec = OptimizerSpec("sgd", lr=1.0)
    for job_id in ("a", "b"):
        shard.init_job(JobConfig(job_id, 0, LENGTH, "sync", 0, spec), [bytes(4 * LENGTH)])
        shard.job(job_id).set_members(["w1", "w2"], 1)
    a, b = shard.job("a"), shard.job("b")
    waiting = BackgroundPull(a, "w1", min_version=1)  # job a's barrier is open
    waiting.wait_held()

    # job b completes a whole step while job a waits.
    assert push(b, "w1", torch.ones(LENGTH), seq=1).outcome is Outcome.BUFFERED
    assert push(b, "w2", torch.ones(LENGTH), seq=1).outcome is Outcome.APPLIED
    assert b.version == 1 and a.version == 0 and waiting.alive

    a.set_members(["w1"], 2)  # a no longer waits on anyone... but nobody pushed: no step
    assert a.version == 0
    assert push(a, "w1", torch.ones(LENGTH), seq=1).outcome is Outcome.APPLIED
    waiting.join()
    assert waiting.version == 1
    assert torch.equal(values(a), -torch.ones(LENGTH)) and torch.equal(
        values(b), -torch.ones(LENGTH)
    )


def test_shard_refuses_duplicate_and_unknown_jobs() -> None:
    shard = Shard()
    config = JobConfig("j", 0, 2, "async", 0, OptimizerSpec("sgd", lr=1.0))
    shard.init_job(config, [bytes(8)])
    with pytest.raises(AlreadyExists):
        shard.init_job(config, [bytes(8)])
    with pytest.raises(NotFound, match="'x' is not on this shard"):
        shard.job("x")
    with pytest.raises(InvalidArgument, match="mode 'bsp' is not supported"):
        shard.init_job(JobConfig("k", 0, 2, "bsp", 0, config.optimizer), [bytes(8)])
    with pytest.raises(InvalidArgument, match="ended after 4 of the announced 8"):
        shard.init_job(JobConfig("k", 0, 2, "async", 0, config.optimizer), [bytes(4)])
    with pytest.raises(ResourceExhausted, match="the limit is 1000000000"):
        shard.init_job(JobConfig("k", 0, 1 << 44, "async", 0, config.optimizer), [])
    # Under the limit but more than the machine can allocate: refused as well, nothing kept.
    with pytest.raises(ResourceExhausted, match="cannot hold"):
        Shard(max_values=1 << 62).init_job(
            JobConfig("k", 0, 1 << 44, "async", 0, config.optimizer), []
        )
    shard.drop("j")
    assert shard.job_ids() == []
    with pytest.raises(NotFound):
        shard.drop("j")


def test_half_precision_pushes_and_pulls() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    assert (
        push(job, "w1", torch.full((LENGTH,), 2.0), seq=1, dtype=common_pb2.DTYPE_BFLOAT16).version
        == 1
    )
    for dtype, torch_dtype in (
        (common_pb2.DTYPE_FLOAT16, torch.float16),
        (common_pb2.DTYPE_BFLOAT16, torch.bfloat16),
    ):
        with job.pull("w1", 0, dtype, timeout=1) as snap:
            assert len(snap.to_bytes()) == 2 * LENGTH
            got = torch.frombuffer(bytearray(snap.to_bytes()), dtype=torch_dtype)
        assert torch.equal(got.float(), torch.arange(LENGTH, dtype=torch.float32) - 1.0)


def test_snapshots_are_copies_taken_at_the_pull() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    with job.pull("w1", 0, F32, timeout=1) as first, job.pull("w1", 0, F32, timeout=1) as second:
        push(job, "w1", torch.ones(LENGTH), seq=1)
        with job.pull("w1", 0, F32, timeout=1) as third:
            old = torch.frombuffer(bytearray(first.to_bytes()), dtype=torch.float32)
            assert torch.equal(old, torch.arange(LENGTH, dtype=torch.float32))
            assert first.to_bytes() == second.to_bytes()
            assert torch.equal(
                torch.frombuffer(bytearray(third.to_bytes()), dtype=torch.float32), old - 0.5
            )


def test_a_pull_streams_one_version_even_when_a_push_lands_mid_stream() -> None:
    job = make_job()
    job.set_members(["w1"], 1)
    before = torch.arange(LENGTH, dtype=torch.float32)
    with job.pull("w1", 0, F32, timeout=1) as snap:
        pieces = snap.payload.chunks(8, bytes)  # 2 values per chunk
        first = next(pieces)
        push(job, "w1", torch.ones(LENGTH), seq=1)  # updates the live vector
        rest = list(pieces)
    streamed = torch.frombuffer(bytearray(first + b"".join(rest)), dtype=torch.float32)
    assert torch.equal(streamed, before)
    assert torch.equal(values(job), before - 0.5)
