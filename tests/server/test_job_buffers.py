"""Model buffers on a job (no sockets): how each consistency mode merges the workers' buffer
changes, and that a refused push changes no buffer."""

from __future__ import annotations

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushHeader, PushResult
from pscluster.server.job_buffers import JobBuffers, decode_buffers, encode_buffers
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32 = common_pb2.DTYPE_FLOAT32
N = 4  # parameters
B = 5  # buffers: four running statistics, then one counter (num_batches_tracked)
COUNTERS = ((4, 1),)
INITIAL = torch.tensor([0.0, 1.0, -2.0, 0.5, 7.0], dtype=torch.float64)


def make_job(
    mode: str = "async",
    *,
    staleness: int = 0,
    backup_workers: int = 0,
    staleness_aware_lr: bool = False,
) -> ShardJob:
    """A job of N zeros (sgd, lr 1) with the buffers INITIAL, members w1 and w2."""
    spec = JobConfig(
        "j",
        0,
        N,
        mode,
        staleness,
        OptimizerSpec("sgd", lr=1.0),
        backup_workers=backup_workers,
        staleness_aware_lr=staleness_aware_lr,
        buffer_start=3,
        buffer_length=B,
        counters=COUNTERS,
    )
    job = ShardJob(spec, torch.zeros(N), INITIAL.clone())
    job.set_members(["w1", "w2"], 1)
    return job


def push(
    job: ShardJob,
    worker: str,
    seq: int,
    delta: torch.Tensor | bytes | None = None,
    *,
    grad: float = 1.0,
    base_version: int | None = None,
    base_clock: int | None = None,
) -> PushResult:
    """A push computed on the job's current version and clock unless told otherwise."""
    raw = encode_buffers(delta) if isinstance(delta, torch.Tensor) else (delta or b"")
    header = PushHeader(
        "j",
        worker,
        seq,
        job.version if base_version is None else base_version,
        job.clock if base_clock is None else base_clock,
        N,
        F32,
        buffer_delta=raw,
    )
    return job.push(header, [wire.encode(torch.full((N,), grad))])


def buffers(job: ShardJob) -> torch.Tensor:
    """The buffers an observer's pull returns."""
    with job.pull("", 0, F32, timeout=1) as snap:
        return decode_buffers(snap.buffers, B, "pulled buffers")


def delta(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_async_applied_pushes_add_their_deltas_in_sequence() -> None:
    # Prepare
    job = make_job("async")
    d1, d2 = delta(0.5, 0.25, 1.0, -0.5, 1.0), delta(-1.0, 0.0, 0.5, 0.5, 1.0)

    # Execute
    r1 = push(job, "w1", 1, d1)
    r2 = push(job, "w2", 1, d2)
    r3 = push(job, "w1", 2)  # no delta: the buffers stay

    # Assert: the running merge, counters and statistics alike
    assert {r.outcome for r in (r1, r2, r3)} == {Outcome.APPLIED}
    assert torch.equal(buffers(job), INITIAL + d1 + d2)


def test_a_stale_ssp_push_changes_no_buffer() -> None:
    # Prepare: both workers one clock on, so a push computed on clock 0 is past the bound 0
    job = make_job("ssp", staleness=0)
    push(job, "w1", 1, delta(1, 1, 1, 1, 1))
    push(job, "w2", 1, delta(1, 1, 1, 1, 1))
    before = buffers(job)

    # Execute
    result = push(job, "w1", 2, delta(5, 5, 5, 5, 1), base_clock=0)

    # Assert
    assert result.outcome is Outcome.STALE
    assert torch.equal(buffers(job), before)
    assert job.stats().pushes_rejected == {"stale": 1}


def test_sync_with_two_workers_averages_statistics_and_sums_counters() -> None:
    # Prepare
    job = make_job("sync")
    d1, d2 = delta(1.0, 2.0, -1.0, 0.25, 1.0), delta(3.0, -2.0, 0.0, 0.75, 1.0)

    # Execute
    first = push(job, "w1", 1, d1)
    held = buffers(job)
    second = push(job, "w2", 1, d2)

    # Assert: nothing moves until the step is applied, then the mean (and the counter's sum)
    assert (first.outcome, second.outcome) == (Outcome.BUFFERED, Outcome.APPLIED)
    assert torch.equal(held, INITIAL)
    assert buffers(job).tolist() == [2.0, 1.0, -2.5, 1.0, 9.0]


def test_sync_with_one_worker_reproduces_its_float32_buffers_exactly() -> None:
    # Prepare: magnitudes from 1e-4 to 1e4, as running means and variances have. (Exact while
    # old and new are within 2**29 of each other: their difference is exact in float64 then.)
    spec = JobConfig("j", 0, N, "sync", 0, OptimizerSpec("sgd", lr=1.0), buffer_length=B)
    gen = torch.Generator().manual_seed(5)
    start = (torch.randn(B, generator=gen) * 1e3).double()
    job = ShardJob(spec, torch.zeros(N), start.clone())
    job.set_members(["w1"], 1)

    for seq in range(1, 30):
        pulled = buffers(job)  # float64, as the worker got them
        scale = 10.0 ** torch.randint(-4, 5, (B,), generator=gen)
        new = (torch.randn(B, generator=gen) * scale).float()  # the worker's float32 buffers

        # Execute
        push(job, "w1", seq, new.double() - pulled)

        # Assert: after the cast back, the worker's values bit for bit
        assert torch.equal(buffers(job).float(), new)


def test_a_late_backup_sync_push_changes_no_buffer() -> None:
    # Prepare: with one backup worker, w1's push closes the step alone
    job = make_job("sync", backup_workers=1)
    d1 = delta(1.0, 1.0, 1.0, 1.0, 1.0)
    assert push(job, "w1", 1, d1).outcome is Outcome.APPLIED

    # Execute
    late = push(job, "w2", 1, delta(9, 9, 9, 9, 9), base_version=0)

    # Assert
    assert late.outcome is Outcome.LATE
    assert torch.equal(buffers(job), INITIAL + d1)


def test_staleness_aware_lr_scales_the_gradient_but_never_the_buffers() -> None:
    # Prepare
    job = make_job("async", staleness_aware_lr=True)
    push(job, "w1", 1, grad=1.0)
    d = delta(1.0, 1.0, 1.0, 1.0, 1.0)

    # Execute: one version stale, so its gradient counts half
    push(job, "w2", 1, d, grad=1.0, base_version=0)

    # Assert
    with job.pull("", 0, F32, timeout=1) as snap:
        values = wire.decode(bytearray(snap.to_bytes()), F32, N)
    assert values.tolist() == [-1.5] * N
    assert torch.equal(buffers(job), INITIAL + d)


@pytest.mark.parametrize("size", [0, 8, 8 * (B - 1), 8 * B + 8, 3])
def test_a_buffer_delta_of_the_wrong_size_is_invalid_and_applies_nothing(size: int) -> None:
    # Prepare
    job = make_job("async")
    raw = bytes(size) if size else b"\x00"  # 0 bytes is "no change": use one stray byte

    # Execute
    with pytest.raises(InvalidArgument) as info:
        push(job, "w1", 1, raw)

    # Assert: the message says what was expected and what came
    assert f"buffer_delta of {len(raw)} bytes" in str(info.value)
    assert f"expected {8 * B} bytes" in str(info.value)
    assert job.version == 0 and torch.equal(buffers(job), INITIAL)
    assert job.stats().pushes_rejected == {"invalid": 1}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_buffer_delta_is_refused_like_a_non_finite_gradient(bad: float) -> None:
    # Prepare
    job = make_job("async")
    d = delta(0.0, 0.0, bad, 0.0, 1.0)

    # Execute
    with pytest.raises(InvalidArgument, match="NaN or Inf values in the buffer_delta"):
        push(job, "w1", 1, d)

    # Assert: nothing applied, and the seq is not used up
    stats = job.stats()
    assert stats.version == 0 and stats.checksum == 0.0
    assert stats.pushes_rejected == {"nonfinite": 1}
    assert torch.equal(buffers(job), INITIAL)
    assert push(job, "w1", 1, delta(1, 1, 1, 1, 1)).outcome is Outcome.APPLIED


def test_a_job_without_buffers_pulls_none_and_refuses_a_delta() -> None:
    # Prepare
    job = ShardJob(JobConfig("j", 0, N, "async", 0, OptimizerSpec("sgd", lr=1.0)), torch.zeros(N))
    job.set_members(["w1"], 1)

    # Execute
    with job.pull("w1", 0, F32, timeout=1) as snap:
        pulled = snap.buffers
    with pytest.raises(InvalidArgument, match="expected 0 bytes"):
        push(job, "w1", 1, delta(1.0))

    # Assert
    assert pulled == b""
    assert push(job, "w1", 1).outcome is Outcome.APPLIED


def test_initial_buffers_must_match_the_config() -> None:
    spec = JobConfig("j", 0, N, "async", 0, OptimizerSpec("sgd", lr=1.0), buffer_length=B)
    with pytest.raises(InvalidArgument, match="needs 5 initial buffer values, got 0"):
        ShardJob(spec, torch.zeros(N))
    with pytest.raises(InvalidArgument, match="reaches past the buffer range"):
        JobBuffers(INITIAL.clone(), [(3, 3)])


def test_counters_only_sum_when_a_step_has_several_pushes() -> None:
    # Prepare
    held = JobBuffers(torch.zeros(4, dtype=torch.float64), [(1, 2)])

    # Execute
    held.apply(delta(2.0, 2.0, 2.0, 2.0), 2)
    held.apply(delta(1.0, 1.0, 1.0, 1.0), 1)
    held.apply(None, 3)

    # Assert
    assert held.values.tolist() == [2.0, 3.0, 3.0, 2.0]
