"""A durable job abandoned mid-stream (as a crash leaves it) and recovered from its folder is the
same state machine as an in-memory twin that saw the same inputs: bit-identical values, buffers
and optimizer state, version, clocks, members, dedup table and open sync step (its buffer sum
too)."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.compression import CompressionSettings, make_compressor
from pscluster.errors import PSError
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.consistency import TrialStep
from pscluster.server.domain import JobConfig, PushHeader
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.durability.recovery import recover_job
from pscluster.server.job_buffers import encode_buffers
from pscluster.server.shard import Shard
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2

LENGTH = 32
BUFFERS = 6  # with buffers: five statistics, then a counter
COUNTERS = ((5, 1),)
POOL = ["w0", "w1", "w2", "w3"]
F32, F16 = common_pb2.DTYPE_FLOAT32, common_pb2.DTYPE_FLOAT16


@dataclass(frozen=True)
class Case:
    mode: str
    optimizer: OptimizerSpec
    staleness: int = 0
    backup_workers: int = 0
    staleness_aware_lr: bool = False
    codec: str = "none"
    half_pushes: bool = False  # some raw pushes in float16 (logged as their wire bytes)
    buffers: bool = True  # the job keeps buffers and pushes change them
    scaled: bool = False  # some pushes carry a loss scale (float32 ones: a durable job logs the
    # receive buffer itself, so the scale must be undone elsewhere)
    switches: bool = False  # the consistency is switched live now and then (mode "auto"),
    # its trial copy taken, gone back to and dropped
    local_pushes: bool = False  # some pushes carry local steps' changes, not gradients


CASES = {
    "async": Case(
        "async",
        OptimizerSpec(name="sgd", lr=0.1, momentum=0.9),
        staleness_aware_lr=True,
        half_pushes=True,
        scaled=True,
    ),
    "async-int8": Case("async", OptimizerSpec(name="adam", lr=0.01), codec="int8", buffers=False),
    "sync": Case("sync", OptimizerSpec(name="adam", lr=0.01), scaled=True),
    "sync-backup": Case("sync", OptimizerSpec(name="sgd", lr=0.1), backup_workers=1),
    "ssp": Case("ssp", OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.1), staleness=1),
    "switching": Case("sync", OptimizerSpec(name="sgd", lr=0.1, momentum=0.9), switches=True),
    # Mode auto's local steps: changes and gradients mixed, in sync steps and out of them.
    "switching-local": Case(
        "sync", OptimizerSpec(name="adam", lr=0.01), switches=True, local_pushes=True
    ),
}
# What a live switch may set (mode, staleness, backup workers).
SWITCHES = [("sync", 0, 0), ("sync", 0, 1), ("ssp", 1, 0), ("ssp", 3, 0), ("async", 0, 0)]


class Driver:
    """Random inputs, each given to the durable job and to its twin; answers must agree."""

    def __init__(self, case: Case, rng: random.Random) -> None:
        self.case = case
        self.rng = rng
        self.seqs = dict.fromkeys(POOL, 0)
        self.codec = make_compressor(CompressionSettings(name=case.codec))
        self.revision = 0

    def step(self, jobs: list[ShardJob]) -> None:
        twin = jobs[-1]
        roll = self.rng.random()
        if roll < 0.8:
            self._push(jobs, twin)
        elif roll < 0.9:
            self._members(jobs, twin)
        elif self.case.switches and roll > 0.95:
            # Now and then a revision that is not newer: ignored by both.
            self.revision += self.rng.choice([-1, 1, 1, 2])
            mode, staleness, backup, revision = (*self.rng.choice(SWITCHES), self.revision)
            trial = self.rng.choice(list(TrialStep))  # auto's trial copy: begun, undone, ended
            local = self.rng.choice([0, 4]) if self.case.local_pushes else 0
            _same(
                jobs,
                lambda job: job.set_consistency(mode, staleness, backup, revision, trial, local),
            )
        else:
            worker = self.rng.choice(POOL)
            _same(jobs, lambda job: _pull(job, worker))

    def _push(self, jobs: list[ShardJob], twin: ShardJob) -> None:
        worker = self.rng.choice(POOL)
        choice = self.rng.random()
        if choice < 0.1 and self.seqs[worker]:
            seq = self.seqs[worker]  # a retry
        elif choice < 0.15 and self.seqs[worker] > 1:
            seq = self.seqs[worker] - 1  # an older one
        else:
            seq = self.seqs[worker] = self.seqs[worker] + 1
        grad = torch.randn(
            LENGTH, generator=torch.Generator().manual_seed(self.rng.getrandbits(32))
        )
        dtype, codec, payload = F32, "none", bytes(wire.encode(grad))
        if self.case.codec != "none":
            codec = self.case.codec
            state = self.codec.new_state(LENGTH)
            payload = bytes(self.codec.compress(grad, state, 0).payload)
        elif self.case.half_pushes and self.rng.random() < 0.3:
            dtype, payload = F16, bytes(wire.encode(grad, F16))
        scale = self.rng.choice([0.0, 1.0, 1024.0, 0.5]) if self.case.scaled else 0.0
        if scale and codec == "none":
            payload = bytes(wire.encode(grad * scale, dtype))
        header = PushHeader(
            "eq",
            worker,
            seq,
            base_version=self.rng.randint(max(0, twin.version - 2), twin.version),
            base_clock=self.rng.randint(max(0, twin.clock - 2), twin.clock),
            length=LENGTH,
            dtype=dtype,
            codec=codec,
            payload_bytes=len(payload) if codec != "none" else 0,
            grad_scale=scale if codec == "none" else 0.0,
            buffer_delta=self._buffer_delta(),
            local_steps=self.rng.choice([0, 3]) if self.case.local_pushes else 0,
        )
        _same(jobs, lambda job: job.push(header, [payload]))

    def _buffer_delta(self) -> bytes:
        """Mostly a change; sometimes none, sometimes a NaN (refused, so never logged)."""
        roll = self.rng.random()
        if not self.case.buffers or roll < 0.2:
            return b""
        gen = torch.Generator().manual_seed(self.rng.getrandbits(32))
        delta = torch.randn(BUFFERS, generator=gen, dtype=torch.float64)
        delta[-1] = 1.0  # num_batches_tracked
        if roll > 0.95:
            delta[0] = float("nan")
        return encode_buffers(delta)

    def _members(self, jobs: list[ShardJob], twin: ShardJob) -> None:
        members = self.rng.sample(POOL, self.rng.randint(1, len(POOL)))
        excluded: list[str] = []
        if self.case.mode == "ssp" and len(members) > 1 and self.rng.random() < 0.6:
            excluded = self.rng.sample(members, 1)
        generation = twin.state_dict()[1]["generation"] + self.rng.choice([-1, 0, 1, 1])
        _same(jobs, lambda job: job.set_members(members, generation, excluded))


def _pull(job: ShardJob, worker: str) -> tuple[int, bytes]:
    with job.pull(worker, 0, F32, timeout=0.0) as snapshot:
        return snapshot.version, snapshot.buffers


def _same(jobs: list[ShardJob], call: Any) -> None:
    answers = []
    for job in jobs:
        try:
            answers.append(call(job))
        except PSError as exc:
            answers.append((type(exc).__name__, str(exc)))
    assert all(a == answers[0] for a in answers), answers


def _state(job: ShardJob) -> dict[str, Any]:
    stats = job.stats()
    # As a checkpoint reads it: with mode auto's trial copy, if one is held.
    tensors, meta = job.capture(lambda: None, "full")
    return {
        "trial": meta["trial"],
        "tensors": {k: v.numpy().tobytes() for k, v in tensors.items()},
        **{k: meta[k] for k in ("optimizer", "policy", "generation", "clocks", "last_push")},
        "consistency": [
            meta["config"][k] for k in ("mode", "staleness", "backup_workers", "local_steps")
        ]
        + [meta["consistency_revision"]],
        **{
            k: getattr(stats, k)
            for k in (
                "version",
                "clock",
                "members",
                "worker_clocks",
                "excluded",
                "waiting_for",
                "pushes_applied",
                "steps_applied",
                "staleness",
                "clock_staleness",
            )
        },
        "refused": {
            k: v
            for k, v in stats.pushes_rejected.items()
            if k in ("stale", "late", "already_pushed")
        },
    }


def _run(case: Case, seed: int, folder: Path, checkpoint_wal_bytes: int) -> None:
    rng = random.Random(seed)
    durability = DurabilityConfig(
        folder, fsync="never", checkpoint_wal_bytes=checkpoint_wal_bytes, checkpoint_log_ratio=0
    )
    config = JobConfig(
        "eq",
        0,
        LENGTH,
        case.mode,
        case.staleness,
        case.optimizer,
        codec=case.codec,
        backup_workers=case.backup_workers,
        staleness_aware_lr=case.staleness_aware_lr,
        buffer_start=LENGTH,
        buffer_length=BUFFERS if case.buffers else 0,
        counters=COUNTERS if case.buffers else (),
    )
    initial = torch.randn(LENGTH, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    buffers = torch.randn(config.buffer_length, generator=gen, dtype=torch.float64)
    raw = encode_buffers(buffers) if case.buffers else b""
    durable = Shard(durability).init_job(config, [bytes(wire.encode(initial))], raw)
    twin = ShardJob(config, initial.clone(), buffers.clone() if case.buffers else None)
    driver = Driver(case, rng)
    _same([durable, twin], lambda job: job.set_members(POOL[:3], 1))
    for _ in range(rng.randint(20, 80)):
        driver.step([durable, twin])
    assert durable.journal is not None
    durable.journal.close()  # abandoned: no final checkpoint, no final fsync

    recovered = recover_job(durability.job_folder("eq"), durability)

    assert recovered is not None
    assert _state(recovered.job) == _state(twin)
    for _ in range(20):  # and it goes on as the same state machine
        driver.step([recovered.job, twin])
    assert _state(recovered.job) == _state(twin)
    assert recovered.job.stats().durable
    assert recovered.job.journal is not None
    recovered.job.journal.close()  # before the folder goes: checkpoints are written beside pushes


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("checkpoint_wal_bytes", [1 << 30, 3000], ids=["log-only", "checkpoints"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_recovered_job_equals_its_twin(name: str, checkpoint_wal_bytes: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _run(CASES[name], seed, Path(folder), checkpoint_wal_bytes)
