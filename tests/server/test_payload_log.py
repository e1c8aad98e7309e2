"""A push's payload is logged before its decision, outside the job's lock, and the decision's
record refers to it: recovery puts every push back exactly, with pushes from several threads
and checkpoints rolling the log between a payload and its decision."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, PushHeader
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.durability.recovery import recover_job
from pscluster.server.durability.wal import RecordType, read_records, segments
from pscluster.server.shard import Shard
from pscluster.transport import wire
from pscluster.v1 import common_pb2

LENGTH = 300
F32 = common_pb2.DTYPE_FLOAT32


def durable_job(folder: Path, checkpoint_wal_bytes: int) -> tuple[Shard, DurabilityConfig]:
    durability = DurabilityConfig(
        folder, fsync="never", checkpoint_wal_bytes=checkpoint_wal_bytes, checkpoint_log_ratio=0
    )
    shard = Shard(durability)
    config = JobConfig("p", 0, LENGTH, "async", 0, OptimizerSpec(name="sgd", lr=0.1, momentum=0.9))
    job = shard.init_job(config, [bytes(wire.encode(torch.zeros(LENGTH)))])
    job.set_members(["a", "b", "c"], 1)
    return shard, durability


def test_pushes_from_three_threads_across_checkpoints_are_recovered_exactly(
    tmp_path: Path,
) -> None:
    # Prepare: a checkpoint every ~3 pushes, so that rolls fall between payloads and decisions
    shard, durability = durable_job(tmp_path, checkpoint_wal_bytes=3 * LENGTH * 4)
    job = shard.job("p")

    def pushes(worker: str) -> None:
        gen = torch.Generator().manual_seed(ord(worker))
        for seq in range(1, 41):
            grad = torch.randn(LENGTH, generator=gen)
            header = PushHeader("p", worker, seq, job.version, 0, LENGTH, F32)
            job.push(header, [bytes(wire.encode(grad))])

    # Execute
    threads = [threading.Thread(target=pushes, args=(w,)) for w in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = job.pull("", 0, F32, timeout=5.0)
    with live:
        values = bytes(live.payload.chunks(1 << 20, bytes).__next__())
    version = job.version
    assert job.journal is not None
    job.journal.close()  # abandoned, as in a crash
    recovered = recover_job(durability.job_folder("p"), durability)

    # Assert: every one of the 120 pushes, in the order they were applied
    assert recovered is not None and version == 120
    assert recovered.job.version == version
    again = recovered.job.pull("", 0, F32, timeout=5.0)
    with again:
        assert bytes(again.payload.chunks(1 << 20, bytes).__next__()) == values


def test_a_payload_the_log_rolled_away_from_is_written_again_with_its_push(
    tmp_path: Path,
) -> None:
    # Prepare
    shard, _ = durable_job(tmp_path, checkpoint_wal_bytes=1 << 30)
    journal = shard.job("p").journal
    assert journal is not None
    header = PushHeader("p", "a", 1, 0, 0, LENGTH, F32)
    payload = bytes(wire.encode(torch.ones(LENGTH)))

    # Execute: one payload logged, then a checkpoint moves the log on before its decision;
    # another logged and decided in the same segment
    logged = journal.log_payload(header, payload)
    assert journal.checkpoint()
    journal.log_push(header, payload, logged)
    second = PushHeader("p", "b", 1, 0, 0, LENGTH, F32)
    journal.log_push(second, payload, journal.log_payload(second, payload))
    journal.close()

    # Assert: in the newest segment, the first push carries its payload again; the second
    # refers to the payload record just before it
    records = list(read_records(segments(journal.folder)[-1], last=True))
    assert [r.type for r in records] == [RecordType.PUSH, RecordType.PUSH_DATA, RecordType.PUSH]
    assert "data" not in records[0].meta and records[0].blob == payload
    assert records[1].blob == payload
    assert records[2].meta["data"] is True and records[2].blob == b""
