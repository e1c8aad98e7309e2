"""Messages over PSC_MAX_MESSAGE_BYTES, and small messages announcing huge sizes.

An oversized message gets RESOURCE_EXHAUSTED from gRPC itself, on unary and streaming RPCs of
both services, and changes nothing. A header that announces a huge tensor must be refused
before the shard allocates for it: the memory tests run the shard as a process of its own and
read its peak RSS (VmHWM) from /proc, so nothing else in the test process blurs the number.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from pscluster.transport import framing
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import (
    GUARDED,
    LENGTH,
    MAX_MESSAGE,
    MEMBER,
    CoordinatorUnderTest,
    ShardUnderTest,
    init_chunks,
)
from tests.fuzz.raw import CO, PS, Raw, serving
from tests.server.shard_process import ShardProcess

BIG = MAX_MESSAGE + 4096
# What a refused announcement may cost the shard process at most (its own baseline aside).
MEMORY_SLACK_KB = 150 * 1024


def _push_header(length: int = LENGTH, payload_bytes: int = 0, codec: str = "") -> bytes:
    header = ps_pb2.PushHeader(
        job_id=GUARDED,
        worker_id=MEMBER,
        seq=1 << 62,
        length=length,
        dtype=common_pb2.DTYPE_FLOAT32,
        codec=codec,
        payload_bytes=payload_bytes,
    )
    return ps_pb2.PushChunk(header=header).SerializeToString()


# --- over the message limit: gRPC refuses before buffering ---


def test_oversized_unary_requests(shard: ShardUnderTest, coordinator: CoordinatorUnderTest) -> None:
    before_shard = shard.fingerprint()
    before_co = coordinator.fingerprint()
    huge_id = "x" * BIG
    for raw, method, request in (
        (shard.raw, PS + "GetJobStats", ps_pb2.JobStatsRequest(job_id=huge_id)),
        (
            shard.raw,
            PS + "SetMembers",
            ps_pb2.SetMembersRequest(job_id=GUARDED, worker_ids=[huge_id]),
        ),
        (coordinator.raw, CO + "GetJob", co_pb2.GetJobRequest(job_id=huge_id)),
        (
            coordinator.raw,
            CO + "ReportFailure",
            co_pb2.ReportFailureRequest(job_id=coordinator.job_id, error=huge_id),
        ),
    ):
        outcome = raw.unary(method, request.SerializeToString())
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, outcome.details)
    pull = ps_pb2.PullRequest(job_id=GUARDED, worker_id=huge_id).SerializeToString()
    assert shard.raw.server_stream(PS + "Pull", pull).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    fetch = co_pb2.FetchBlobRequest(job_id=coordinator.job_id, blob=huge_id).SerializeToString()
    outcome = coordinator.raw.server_stream(CO + "FetchBlob", fetch)
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert serving(shard.raw) and serving(coordinator.raw)
    assert shard.fingerprint() == before_shard
    assert coordinator.fingerprint() == before_co


def test_oversized_chunk_in_a_push_stream(shard: ShardUnderTest) -> None:
    before = shard.fingerprint()
    outcome = shard.raw.client_stream(PS + "Push", [_push_header(), framing.frame(b"\0" * BIG)])
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
    shard.check(before, outcome, "oversized Push chunk")


def test_oversized_chunk_in_an_init_stream(shard: ShardUnderTest) -> None:
    config, _ = init_chunks("oversized-init", torch.zeros(4))
    outcome = shard.raw.client_stream(PS + "InitJob", [config, framing.frame(b"\0" * BIG)])
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
    stats = ps_pb2.JobStatsRequest(job_id="oversized-init").SerializeToString()
    assert shard.raw.unary(PS + "GetJobStats", stats).code == grpc.StatusCode.NOT_FOUND
    assert serving(shard.raw)


def test_oversized_submission_chunk(coordinator: CoordinatorUnderTest) -> None:
    before = coordinator.fingerprint()
    chunks = coordinator.submission.serialized()
    blob = common_pb2.BlobChunk(blob="dataset", data=b"\0" * BIG)
    chunks.insert(1, co_pb2.SubmitJobChunk(blob=blob).SerializeToString())
    outcome = coordinator.raw.client_stream(CO + "SubmitJob", chunks)
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
    coordinator.check(before, outcome, "oversized SubmitJob chunk")


def test_a_chunk_just_under_the_limit_is_fine(shard: ShardUnderTest) -> None:
    # The limit is the limit: one byte less than it still goes through (and is refused only
    # for carrying more than the push announced).
    chunk = framing.frame(b"\0" * (MAX_MESSAGE - 16))
    outcome = shard.raw.client_stream(PS + "Push", [_push_header(), chunk])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert "more than the announced" in outcome.details


# --- small messages announcing huge sizes ---


@pytest.mark.parametrize(
    ("length", "payload_bytes", "codec"),
    [
        (1 << 40, 0, ""),
        (2**64 - 1, 0, ""),
        (LENGTH, 2**64 - 1, ""),
        (LENGTH, 1 << 40, "int8"),
    ],
)
def test_push_announcing_a_huge_size_is_refused_at_once(
    shard: ShardUnderTest, length: int, payload_bytes: int, codec: str
) -> None:
    before = shard.fingerprint()
    outcome = shard.raw.client_stream(PS + "Push", [_push_header(length, payload_bytes, codec)])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    shard.check(before, outcome, "huge Push announcement")


@pytest.mark.parametrize("length", [1 << 61, 2**64 - 1])
def test_init_job_announcing_an_impossible_length(shard: ShardUnderTest, length: int) -> None:
    config = ps_pb2.ShardJobConfig(
        job_id=f"huge-{length}",
        length=length,
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1),
    )
    outcome = shard.raw.client_stream(
        PS + "InitJob", [ps_pb2.InitJobChunk(config=config).SerializeToString()]
    )
    assert outcome.code in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ), outcome
    assert serving(shard.raw)


# --- memory: a shard process of its own ---


@dataclass
class MeasuredShard:
    shard: ShardProcess
    raw: Raw

    def peak_kb(self) -> int:
        status = Path(f"/proc/{self.shard.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0])


@pytest.fixture(scope="module")
def shard_process() -> Iterator[MeasuredShard]:
    shard = ShardProcess(
        {
            "PSC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
            "PSC_CHUNK_BYTES": str(MAX_MESSAGE // 4),
            "PSC_MAX_MODEL_PARAMETERS": str(1 << 20),
            "PSC_GRPC_THREADS": "4",
        }
    )
    try:
        raw = Raw(f"127.0.0.1:{shard.start()}")
        for job_id, codec in (("mem", ""), ("mem-int8", "int8")):
            chunks = init_chunks(job_id, torch.zeros(LENGTH), codec=codec)
            assert raw.client_stream(PS + "InitJob", chunks).code == grpc.StatusCode.OK
            members = ps_pb2.SetMembersRequest(job_id=job_id, worker_ids=[MEMBER], generation=1)
            assert raw.unary(PS + "SetMembers", members.SerializeToString()).code.name == "OK"
        yield MeasuredShard(shard, raw)
        raw.close()
    finally:
        shard.stop()


def test_huge_push_announcements_cost_no_memory(shard_process: MeasuredShard) -> None:
    before = shard_process.peak_kb()
    for length, payload_bytes in ((1 << 34, 0), (LENGTH, 1 << 34), (2**64 - 1, 2**64 - 1)):
        header = ps_pb2.PushHeader(
            job_id="mem", worker_id=MEMBER, seq=1, length=length, payload_bytes=payload_bytes
        )
        chunks = [ps_pb2.PushChunk(header=header).SerializeToString()]
        outcome = shard_process.raw.client_stream(PS + "Push", chunks)
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert serving(shard_process.raw)
    assert shard_process.peak_kb() - before < MEMORY_SLACK_KB


def test_init_job_announcing_a_huge_length_costs_no_memory(shard_process: MeasuredShard) -> None:
    # 64M values (256 MB) announced, past PSC_MAX_MODEL_PARAMETERS (1M here), and no data.
    before = shard_process.peak_kb()
    config = ps_pb2.ShardJobConfig(
        job_id="mem-huge",
        length=1 << 26,
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1),
    )
    chunks = [ps_pb2.InitJobChunk(config=config).SerializeToString()]
    outcome = shard_process.raw.client_stream(PS + "InitJob", chunks)
    assert outcome.code in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ), outcome
    assert serving(shard_process.raw)
    assert shard_process.peak_kb() - before < MEMORY_SLACK_KB, "allocated before refusing"


def test_int8_chunk_size_does_not_allocate(shard_process: MeasuredShard) -> None:
    # A well-sized int8 payload for 64 values (one scale, 64 int8) whose chunk size is 2^28.
    payload = struct.pack("<I", 1 << 28) + struct.pack("<f", 0.5) + bytes(LENGTH)
    header = ps_pb2.PushHeader(
        job_id="mem-int8",
        worker_id=MEMBER,
        seq=1,
        length=LENGTH,
        codec="int8",
        payload_bytes=len(payload),
    )
    before = shard_process.peak_kb()
    chunks = [ps_pb2.PushChunk(header=header).SerializeToString(), framing.frame(payload)]
    outcome = shard_process.raw.client_stream(PS + "Push", chunks)
    assert serving(shard_process.raw)
    assert shard_process.peak_kb() - before < MEMORY_SLACK_KB, f"allocated ({outcome.code})"
