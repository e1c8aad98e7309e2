"""Held zeros (a pruned model's fine-tune) on one shard, without sockets: the zeros of the
initial values inside the job's hold_zeros spans stay exactly zero through every update, in
every mode and with optimizers that move weights whose gradient is zero (momentum, weight
decay, Adam), and a checkpoint carries the mask across a restart."""

from __future__ import annotations

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushHeader
from pscluster.server.durability import image
from pscluster.server.shard_job import ShardJob
from pscluster.server.zero_mask import ZeroMask
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32 = common_pb2.DTYPE_FLOAT32
LENGTH = 40
SPANS = ((4, 12), (20, 16))  # two "weights"; the rest (biases) is not held
OPTIMIZERS = {
    "sgd+momentum+decay": OptimizerSpec("sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": OptimizerSpec("adam", lr=0.05),
}


def initial() -> torch.Tensor:
    """Every other value of the spans pruned; a zero outside them, which is not held."""
    values = torch.linspace(-1, 1, LENGTH)
    for start, length in SPANS:
        values[start : start + length : 2] = 0.0
    values[0] = 0.0
    return values


def held() -> torch.Tensor:
    mask = torch.zeros(LENGTH, dtype=torch.bool)
    for start, length in SPANS:
        mask[start : start + length : 2] = True
    return mask


def make_job(mode: str, optimizer: OptimizerSpec) -> ShardJob:
    staleness = 1 if mode == "ssp" else 0
    config = JobConfig("j", 0, LENGTH, mode, staleness, optimizer, hold_zeros=SPANS)
    return ShardJob(config, initial())


def values(job: ShardJob) -> torch.Tensor:
    with job.pull("", 0, F32, timeout=1) as snap:
        return wire.decode(bytearray(snap.to_bytes()), F32, LENGTH)


def train(job: ShardJob, workers: list[str], rounds: int, seed: int = 0, start: int = 0) -> None:
    """Each worker pushes a random gradient (nonzero everywhere) each round; ``start``
    rounds were pushed before."""
    gen = torch.Generator().manual_seed(seed)
    for r in range(start, start + rounds):
        for w in workers:
            grad = torch.randn(LENGTH, generator=gen) + 0.5
            base = job.version
            header = PushHeader("j", w, r + 1, base, r, LENGTH, F32)
            result = job.push(header, [wire.encode(grad, F32)])
            assert result.outcome in (Outcome.APPLIED, Outcome.BUFFERED), result


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=list(OPTIMIZERS))
@pytest.mark.parametrize("mode", ["async", "sync", "ssp"])
def test_held_zeros_stay_exactly_zero_while_the_rest_trains(mode: str, optimizer: str) -> None:
    # Prepare
    job = make_job(mode, OPTIMIZERS[optimizer])
    job.set_members(["w1", "w2"], 1)

    # Execute
    train(job, ["w1", "w2"], rounds=6)

    # Assert
    after = values(job)
    assert job.version >= 6
    assert torch.equal(after[held()], torch.zeros(int(held().sum())))
    assert not torch.signbit(after[held()]).any()  # +0.0, not -0.0
    moved = ~held()
    assert (after[moved] != initial()[moved]).all()  # the zero outside the spans trains too


def test_a_checkpoint_keeps_the_mask_across_a_restart() -> None:
    # Prepare: a weight that trained to zero by chance is not pruned; the restored job must
    # not take it for one (its mask comes from the checkpoint, not from the values).
    job = make_job("async", OPTIMIZERS["sgd+momentum+decay"])
    job.set_members(["w1"], 1)
    train(job, ["w1"], rounds=3)
    tensors, meta = job.state_dict()
    tensors["values"][5] = 0.0

    # Execute
    restored = image.restore(tensors, meta)
    train(restored, ["w1"], rounds=2, seed=1, start=3)

    # Assert
    after = values(restored)
    assert torch.equal(after[held()], torch.zeros(int(held().sum())))
    assert after[5] != 0.0


def test_without_hold_zeros_nothing_is_masked_and_zeros_train() -> None:
    config = JobConfig("j", 0, LENGTH, "async", 0, OPTIMIZERS["adam"])
    job = ShardJob(config, initial())
    job.set_members(["w1"], 1)

    train(job, ["w1"], rounds=2)

    assert (values(job)[held()] != 0).all()
    assert "hold_zeros" not in job.state_dict()[0]


@pytest.mark.parametrize("span", [(30, 20), (-1, 3), (0, 0)])
def test_a_span_outside_the_range_is_refused(span: tuple[int, int]) -> None:
    with pytest.raises(InvalidArgument, match="hold_zeros span"):
        ZeroMask.of_zeros(initial(), [span])
