"""What the shard fuzz tests draw from and how they call: ids, numbers at the edges, codecs,
and one fuzzed call to a ParameterServer RPC by name."""

from __future__ import annotations

import struct

import grpc
from hypothesis import strategies as st

from pscluster.transport import framing
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import FIXTURE_JOBS, MEMBER, ShardUnderTest
from tests.fuzz.raw import PS, REFUSED, Outcome, send
from tests.support import SHARD_RPCS

U64 = 2**64 - 1
PULL_CODES = REFUSED | {grpc.StatusCode.DEADLINE_EXCEEDED}

ids = st.one_of(st.text(max_size=12), st.sampled_from(["", "nope", "j\x00", "🙂" * 3]))
job_ids = st.one_of(st.sampled_from(sorted(FIXTURE_JOBS)), ids)
worker_ids = st.one_of(st.just(MEMBER), ids)
# Small numbers, the edges, and "negative-like" values (a signed -1 sent as uint64).
u64 = st.one_of(
    st.integers(0, 4),
    st.sampled_from([2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, U64]),
    st.integers(0, U64),
)
u32 = st.one_of(st.integers(0, 4), st.sampled_from([1023, 1 << 20, 2**31, 2**32 - 1]))
dtypes = st.integers(0, 6)  # proto3 enums are open: unknown values reach the server
codecs = st.one_of(st.sampled_from(["", "none", "fp16", "bf16", "int8", "topk", "dgc"]), ids)
floats = st.floats(allow_nan=True, allow_infinity=True)


def call(shard: ShardUnderTest, rpc: str, messages: list[bytes]) -> Outcome:
    """``messages`` to the shard's ``rpc``, however that RPC streams."""
    return send(shard.raw, SHARD_RPCS[rpc], messages)


def float_bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def data_chunk(n: int) -> bytes:
    """A framed data chunk of ``n`` float32 values."""
    return framing.frame(float_bytes([0.5] * n))


def job_exists(shard: ShardUnderTest, job_id: str) -> bool:
    request = ps_pb2.JobStatsRequest(job_id=job_id).SerializeToString()
    return shard.raw.unary(PS + "GetJobStats", request).code == grpc.StatusCode.OK
