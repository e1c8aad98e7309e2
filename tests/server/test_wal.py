"""The write-ahead log's record format and the checkpoint files, on real files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, PushHeader
from pscluster.server.durability.checkpoint import (
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from pscluster.server.durability.image import capture, restore
from pscluster.server.durability.wal import (
    CorruptSegment,
    RecordType,
    WriteAheadLog,
    read_records,
)
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2


def _write(path: Path, count: int, fsync: str = "always") -> list[bytes]:
    wal = WriteAheadLog(path, fsync, 0.01)  # type: ignore[arg-type]
    blobs = [bytes([i]) * (i * 100) for i in range(count)]
    for i, blob in enumerate(blobs):
        wal.sync(wal.append(RecordType.PUSH, {"i": i, "name": f"w{i}"}, blob))
    wal.close()
    return blobs


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_records_read_back_in_order(tmp_path: Path, fsync: str) -> None:
    # Prepare
    path = tmp_path / "wal-000000000000.log"
    blobs = _write(path, 5, fsync)

    # Execute
    records = list(read_records(path, last=True))

    # Assert
    assert [r.meta for r in records] == [{"i": i, "name": f"w{i}"} for i in range(5)]
    assert [r.blob for r in records] == blobs
    assert all(r.type is RecordType.PUSH for r in records)


def test_torn_tail_is_truncated_and_appends_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "wal-000000000000.log"
    _write(path, 4)
    whole = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(whole - 7)  # the crash cut the last record short

    with caplog.at_level(logging.WARNING):
        records = list(read_records(path, last=True))

    assert [r.meta["i"] for r in records] == [0, 1, 2]
    assert "torn record" in caplog.text and "truncating" in caplog.text
    good = path.stat().st_size
    assert good < whole - 7
    wal = WriteAheadLog(path, "always", 0.01)
    wal.sync(wal.append(RecordType.READ, {"worker_id": "w"}))
    wal.close()
    assert [r.type for r in read_records(path, last=True)][-1] is RecordType.READ


def test_crc_mismatch_is_detected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "wal-000000000000.log"
    _write(path, 4)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flipped bits inside the last record's blob
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        records = list(read_records(path, last=True))

    assert [r.meta["i"] for r in records] == [0, 1, 2]
    assert "CRC32 does not match" in caplog.text


def test_damage_in_an_older_segment_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "wal-000000000000.log"
    _write(path, 3)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(CorruptSegment, match=r"wal-000000000000\.log"):
        list(read_records(path, last=False))


def _job(optimizer: OptimizerSpec, length: int = 50) -> ShardJob:
    config = JobConfig("ckpt", 0, length, "async", 0, optimizer)
    job = ShardJob(config, torch.linspace(-1, 1, length))
    job.set_members(["w"], 1)
    return job


def _push(job: ShardJob, seq: int, grad: torch.Tensor) -> None:
    header = PushHeader("ckpt", "w", seq, job.version, 0, grad.numel(), common_pb2.DTYPE_FLOAT32)
    job.push(header, [bytes(wire.encode(grad))])


@pytest.mark.parametrize(
    "optimizer",
    [
        OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, nesterov=True),
        OptimizerSpec(name="adam", lr=0.01, weight_decay=0.01),
        OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_checkpoint_round_trip_keeps_optimizer_state(
    tmp_path: Path, optimizer: OptimizerSpec
) -> None:
    # Prepare: a job a few steps in, so momentum / Adam moments and step counts are non-trivial
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(50, generator=gen) for _ in range(6)]
    job = _job(optimizer)
    for seq, grad in enumerate(grads[:3], start=1):
        _push(job, seq, grad)
    path = tmp_path / "checkpoint-000000000001.safetensors"

    # Execute
    write_checkpoint(path, *capture(job))
    back = restore(*read_checkpoint(path))
    for seq, grad in enumerate(grads[3:], start=4):  # both go on with the same gradients
        _push(job, seq, grad)
        _push(back, seq, grad)

    # Assert: bit-identical, so every piece of optimizer state came back exactly
    saved, _ = job.state_dict()
    loaded, _ = back.state_dict()
    assert torch.equal(loaded["values"], saved["values"])
    assert back.version == job.version == 6
    assert saved.keys() == loaded.keys() and any(k.startswith("opt.") for k in saved)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert back.stats().pushes_applied == 6


def test_damaged_checkpoint_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-000000000001.safetensors"
    write_checkpoint(path, {"values": torch.arange(1000.0)}, {"version": 1})
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # inside the tensor bytes: safetensors alone would not notice
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"checkpoint-000000000001.*CRC32"):
        read_checkpoint(path)
