"""fp16 loss scaling on a job (no sockets): the shard divides a push's gradient by its
``grad_scale`` before anything else, and refuses a scale it cannot divide by."""

from __future__ import annotations

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushHeader, PushResult
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32, F16 = common_pb2.DTYPE_FLOAT32, common_pb2.DTYPE_FLOAT16
N = 64
GEN = torch.Generator().manual_seed(11)
INITIAL = torch.randn(N, generator=GEN)
GRADS = [torch.randn(N, generator=GEN) for _ in range(4)]


def make_job(mode: str = "async", *, staleness_aware_lr: bool = False) -> ShardJob:
    optimizer = OptimizerSpec("sgd", lr=0.1, momentum=0.9)
    spec = JobConfig("j", 0, N, mode, 0, optimizer, staleness_aware_lr=staleness_aware_lr)
    job = ShardJob(spec, INITIAL.clone())
    job.set_members(["w1", "w2"], 1)
    return job


def push(
    job: ShardJob,
    worker: str,
    seq: int,
    grad: torch.Tensor,
    *,
    scale: float = 0.0,
    dtype: int = F32,
    base_version: int | None = None,
) -> PushResult:
    """A push of ``grad * scale`` (0: unscaled) announcing ``scale``."""
    base = job.version if base_version is None else base_version
    header = PushHeader("j", worker, seq, base, job.clock, N, dtype, grad_scale=scale)
    return job.push(header, [wire.encode(grad * (scale or 1.0), dtype)])


def values(job: ShardJob) -> torch.Tensor:
    with job.pull("", 0, F32, timeout=1) as snap:
        return wire.decode(bytearray(snap.to_bytes()), F32, N)


@pytest.mark.parametrize(
    ("mode", "config"),
    [("async", {}), ("async", {"staleness_aware_lr": True}), ("sync", {})],
    ids=["async", "staleness-aware", "sync"],
)
def test_a_scaled_push_lands_exactly_like_the_unscaled_one(
    mode: str, config: dict[str, bool]
) -> None:
    # Prepare: a power of two, so grad * 1024 is exact in float32 and so is the division
    scaled, plain = make_job(mode, **config), make_job(mode, **config)

    # Execute: the scale is undone before staleness scaling and before the sync sum
    for seq, (g1, g2) in enumerate(zip(GRADS[::2], GRADS[1::2], strict=True), start=1):
        base = scaled.version
        push(scaled, "w1", seq, g1, scale=1024.0)
        push(scaled, "w2", seq, g2, base_version=base)
        push(plain, "w1", seq, g1)
        push(plain, "w2", seq, g2, base_version=base)

    # Assert: bit for bit
    assert scaled.version == plain.version > 0
    assert torch.equal(values(scaled), values(plain))


def test_a_scaled_float16_push_is_divided_after_decoding() -> None:
    # Prepare
    job = make_job()
    grad = GRADS[0]
    wire_grad = wire.decode(wire.encode(grad * 256.0, F16), F16, N)  # what arrives, as float32

    # Execute
    push(job, "w1", 1, grad, scale=256.0, dtype=F16)

    # Assert
    expected = INITIAL.clone()
    expected.add_(wire_grad / 256.0, alpha=-0.1)
    assert torch.equal(values(job), expected)


def test_scale_zero_means_one() -> None:
    scaled, plain = make_job(), make_job()

    push(scaled, "w1", 1, GRADS[0], scale=0.0)
    push(plain, "w1", 1, GRADS[0], scale=1.0)

    assert torch.equal(values(scaled), values(plain))


@pytest.mark.parametrize(
    "scale", [-1.0, -0.5, float("inf"), float("-inf"), float("nan"), 1e-300, 1e300]
)
def test_a_bad_grad_scale_is_invalid_and_applies_nothing(scale: float) -> None:
    # Prepare
    job = make_job()
    header = PushHeader("j", "w1", 1, 0, 0, N, F32, grad_scale=scale)

    # Execute
    with pytest.raises(InvalidArgument, match=r"grad_scale .* is not a positive, finite"):
        job.push(header, [wire.encode(GRADS[0])])

    # Assert
    stats = job.stats()
    assert stats.version == 0 and stats.pushes_rejected == {"invalid": 1}
    assert torch.equal(values(job), INITIAL)
    assert push(job, "w1", 1, GRADS[0], scale=8.0).outcome is Outcome.APPLIED


def test_a_scale_that_overflows_the_gradient_is_refused_as_non_finite() -> None:
    # Prepare: 3e38 / 0.5 does not fit in float32
    job = make_job()
    header = PushHeader("j", "w1", 1, 0, 0, N, F32, grad_scale=0.5)

    # Execute
    with pytest.raises(InvalidArgument, match="NaN or Inf values in the unscaled gradient"):
        job.push(header, [wire.encode(torch.full((N,), 3e38))])

    # Assert
    assert job.stats().pushes_rejected == {"nonfinite": 1}
    assert torch.equal(values(job), INITIAL)
