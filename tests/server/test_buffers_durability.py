"""Buffers and loss scales in a durable job's files: checkpoints keep the buffers and an open
sync step's buffer sum, the config round-trips through JSON, and files written before buffers
existed still read back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushHeader
from pscluster.server.durability.checkpoint import read_checkpoint, write_checkpoint
from pscluster.server.durability.image import capture, config_from_json, config_to_json, restore
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.durability.recovery import recover_job
from pscluster.server.durability.wal import RecordType, encode, segments
from pscluster.server.job_buffers import decode_buffers, encode_buffers
from pscluster.server.shard import Shard
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32 = common_pb2.DTYPE_FLOAT32
N = 8
B = 3
CONFIG = JobConfig(
    "d",
    0,
    N,
    "sync",
    0,
    OptimizerSpec(name="sgd", lr=0.5),
    buffer_start=100,
    buffer_length=B,
    counters=((2, 1),),
)
INITIAL = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)


def _push(job: ShardJob, worker: str, delta: torch.Tensor, scale: float = 0.0) -> Outcome:
    grad = torch.ones(N) * (scale or 1.0)
    header = PushHeader(
        "d",
        worker,
        1,
        job.version,
        0,
        N,
        F32,
        grad_scale=scale,
        buffer_delta=encode_buffers(delta),
    )
    return job.push(header, [wire.encode(grad)]).outcome


def _buffers(job: ShardJob) -> torch.Tensor:
    with job.pull("", 0, F32, timeout=1) as snap:
        return decode_buffers(snap.buffers, B, "pulled buffers")


def test_the_config_round_trips_through_json_with_its_buffer_fields() -> None:
    back = config_from_json(json.loads(json.dumps(config_to_json(CONFIG))))
    assert back == CONFIG


def test_a_config_written_before_buffers_is_a_job_without_any() -> None:
    old = config_to_json(CONFIG)
    for key in ("buffer_start", "buffer_length", "counters"):
        del old[key]

    back = config_from_json(old)

    assert (back.buffer_start, back.buffer_length, back.counters) == (0, 0, ())


def test_a_checkpoint_keeps_the_buffers_and_the_open_sync_steps_buffer_sum(
    tmp_path: Path,
) -> None:
    # Prepare: a step half done, its first push's change held by the policy
    job = ShardJob(CONFIG, torch.zeros(N), INITIAL.clone())
    job.set_members(["w1", "w2"], 1)
    assert _push(job, "w1", torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)) is Outcome.BUFFERED
    path = tmp_path / "checkpoint-000000000001.safetensors"

    # Execute
    write_checkpoint(path, *capture(job))
    back = restore(*read_checkpoint(path))
    for each in (job, back):
        last = torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64)
        assert _push(each, "w2", last, scale=4.0) is Outcome.APPLIED

    # Assert: the mean of the statistics, the sum of the counter, on both
    assert _buffers(back).tolist() == _buffers(job).tolist() == [4.0, 0.0, 2.0]
    assert back.checksum() == job.checksum()


def test_a_push_logged_before_buffers_replays_as_unscaled_and_changing_nothing(
    tmp_path: Path,
) -> None:
    # Prepare: a durable job, then a push record as older shards wrote it (no grad_scale, no
    # buffer delta) appended to its log, as a crash would leave it
    durability = DurabilityConfig(tmp_path, fsync="never")
    config = JobConfig("old", 0, N, "async", 0, OptimizerSpec(name="sgd", lr=0.5))
    job = Shard(durability).init_job(config, [bytes(wire.encode(torch.zeros(N)))])
    job.set_members(["w"], 1)
    assert job.journal is not None
    job.journal.close()
    meta = {
        **dict(worker_id="w", seq=1, base_version=0, base_clock=0, length=N, dtype=F32),
        **dict(batch_size=1, codec="none", payload_bytes=0),
    }
    record = encode(RecordType.PUSH, meta, bytes(wire.encode(torch.ones(N))))
    fd = os.open(segments(durability.job_folder("old"))[-1], os.O_WRONLY | os.O_APPEND)
    try:
        os.writev(fd, record)
    finally:
        os.close(fd)

    # Execute
    recovered = recover_job(durability.job_folder("old"), durability)

    # Assert
    assert recovered is not None and recovered.records_replayed == 2
    assert recovered.job.version == 1
    assert recovered.job.checksum() == -0.5 * N
    recovered.job.journal.close()  # type: ignore[union-attr]
