"""Fuzzing every ParameterServer RPC on a real shard: whatever comes in, the call ends OK or
with a precise refusal, the shard keeps serving, and a refused call leaves the parameters of
the jobs made before the fuzzing (checksum and version) as they were. Pushes and InitJob, fuzzed
deeper: test_shard_push_fuzz.py and test_shard_init_fuzz.py."""

from __future__ import annotations

import grpc
from hypothesis import given
from hypothesis import strategies as st

from pscluster.transport import framing
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import FIXTURE_JOBS, LENGTH, SCRATCH, ShardUnderTest, fuzz
from tests.fuzz.raw import REFUSED, assert_precise
from tests.fuzz.shard_inputs import (
    PULL_CODES,
    U64,
    call,
    dtypes,
    ids,
    job_ids,
    u32,
    u64,
    worker_ids,
)
from tests.support import SHARD_RPCS

# --- undecodable and unknown bytes ---


def unknown_fields() -> st.SearchStrategy[bytes]:
    """Fields no message of ours has (numbers 100..2000), well encoded: protobuf skips them."""

    def encode(number: int, value: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(value)) + value

    return st.builds(encode, st.integers(100, 2000), st.binary(max_size=20))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@fuzz(300)
@given(
    rpc=st.sampled_from(sorted(SHARD_RPCS)),
    messages=st.lists(st.one_of(st.binary(max_size=64), unknown_fields()), max_size=4),
)
def test_random_bytes(shard: ShardUnderTest, rpc: str, messages: list[bytes]) -> None:
    before = shard.fingerprint()
    outcome = call(shard, rpc, messages)
    allowed = PULL_CODES if rpc == "Pull" else REFUSED
    assert_precise(outcome, allowed, f"{rpc} {messages!r}")
    shard.check(before, outcome, rpc)


# --- well-formed messages with chosen fields ---


@fuzz(150)
@given(
    job_id=st.one_of(st.just(SCRATCH), ids),
    workers=st.lists(ids, max_size=4),
    excluded=st.lists(ids, max_size=2),
    generation=u64,
)
def test_set_members(
    shard: ShardUnderTest, job_id: str, workers: list[str], excluded: list[str], generation: int
) -> None:
    request = ps_pb2.SetMembersRequest(
        job_id=job_id, worker_ids=workers, generation=generation, excluded_worker_ids=excluded
    )
    before = shard.fingerprint()
    outcome = call(shard, "SetMembers", [request.SerializeToString()])
    assert_precise(outcome, REFUSED, str(request))
    shard.check(before, outcome, "SetMembers")
    if outcome.code == grpc.StatusCode.OK:
        reply = ps_pb2.SetMembersReply.FromString(outcome.replies[0])
        assert reply.generation >= generation


@fuzz(150)
@given(
    job_id=job_ids,
    worker_id=st.one_of(st.just(""), worker_ids),
    min_version=st.one_of(st.just(0), st.sampled_from([1, U64])),
    dtype=dtypes,
    chunk_bytes=u32,
)
def test_pull(
    shard: ShardUnderTest,
    job_id: str,
    worker_id: str,
    min_version: int,
    dtype: int,
    chunk_bytes: int,
) -> None:
    request = ps_pb2.PullRequest(
        job_id=job_id,
        worker_id=worker_id,
        min_version=min_version,
        dtype=dtype,  # type: ignore[arg-type]
        chunk_bytes=chunk_bytes,
    )
    before = shard.fingerprint(job_id)
    outcome = call(shard, "Pull", [request.SerializeToString()])
    assert_precise(outcome, PULL_CODES, str(request))
    shard.check(before, outcome, "Pull")
    if outcome.code == grpc.StatusCode.OK:
        header = ps_pb2.PullChunk.FromString(outcome.replies[0]).header
        payload = b"".join(framing.data_of(r) or b"" for r in outcome.replies[1:])
        itemsize = 4 if header.dtype == common_pb2.DTYPE_FLOAT32 else 2
        assert len(payload) == header.length * itemsize == LENGTH * itemsize


# --- GetJobStats and DropJob ---


@fuzz(150)
@given(rpc=st.sampled_from(["GetJobStats", "DropJob"]), job_id=ids)
def test_stats_and_drop_of_unknown_jobs(shard: ShardUnderTest, rpc: str, job_id: str) -> None:
    if job_id in FIXTURE_JOBS:
        return
    request = ps_pb2.JobStatsRequest(job_id=job_id).SerializeToString()  # same field as DropJob
    before = shard.fingerprint()
    outcome = call(shard, rpc, [request])
    assert_precise(outcome, {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}, rpc)
    shard.check(before, outcome, rpc)
