"""Fuzzing Push on a real shard: well-formed pushes with one or two fields made wrong, streams
of the wrong shape, and streams cancelled half-way; a refused push changes no parameter."""

from __future__ import annotations

import itertools
from typing import Any

import grpc
import torch
from hypothesis import given
from hypothesis import strategies as st

from pscluster.compression import CompressionSettings, make_compressor
from pscluster.transport import framing
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import FIXTURE_JOBS, GUARDED, LENGTH, MEMBER, ShardUnderTest, fuzz
from tests.fuzz.raw import PS, REFUSED, assert_precise
from tests.fuzz.shard_inputs import (
    call,
    codecs,
    data_chunk,
    dtypes,
    float_bytes,
    ids,
    job_ids,
    u64,
)

SEQ = itertools.count(1 << 40)  # fresh seqs, above any a fuzzed push may have left
PUSH_FIELDS = (
    *("job_id", "worker_id", "seq", "base_version", "length", "dtype", "codec"),
    *("payload_bytes", "payload"),
)


def mutations(payload: bytes) -> st.SearchStrategy[bytes]:
    """A payload made wrong: random bytes of its size, cut short, extended, one byte changed,
    or a NaN among float32 values."""
    size = len(payload)
    flip = st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 255)).map(
        lambda t: (
            payload[: t[0]] + bytes([payload[t[0]] ^ t[1]]) + payload[t[0] + 1 :]
            if payload
            else b"x"
        )
    )
    return st.one_of(
        st.binary(min_size=size, max_size=size),
        st.integers(0, max(size - 1, 0)).map(lambda n: payload[:n]),
        st.binary(min_size=1, max_size=8).map(lambda extra: payload + extra),
        flip,
        st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f"]).map(
            lambda bad: bad + payload[4:]
        ),
    )


def encode(codec: str, values: list[float]) -> bytes:
    if codec == "none":
        return float_bytes(values)
    compressor = make_compressor(CompressionSettings(name=codec, ratio=0.25))
    tensor = torch.tensor(values, dtype=torch.float32)
    return bytes(compressor.compress(tensor, compressor.new_state(len(values)), 0).payload)


@st.composite
def pushes(draw: st.DrawFn) -> tuple[ps_pb2.PushHeader, bytes]:
    """A push to a fixture job that would be applied, with up to two fields made wrong: most
    examples then get past the first checks and fuzz the deeper ones."""
    mutated = draw(st.sets(st.sampled_from(PUSH_FIELDS), max_size=2))

    def pick(field: str, valid: object, wrong: st.SearchStrategy[Any]) -> Any:
        return draw(wrong) if field in mutated else valid

    job_id = draw(st.sampled_from(sorted(FIXTURE_JOBS)))
    codec = FIXTURE_JOBS[job_id] or "none"
    values = draw(st.lists(st.floats(-4, 4, width=32), min_size=LENGTH, max_size=LENGTH))
    payload = pick("payload", encode(codec, values), mutations(encode(codec, values)))
    header = ps_pb2.PushHeader(
        job_id=pick("job_id", job_id, job_ids),
        worker_id=pick("worker_id", MEMBER, ids),
        seq=pick("seq", next(SEQ), u64),
        base_version=pick("base_version", 0, u64),
        length=pick("length", LENGTH, st.one_of(st.integers(0, 2 * LENGTH), u64)),
        dtype=pick("dtype", common_pb2.DTYPE_FLOAT32, dtypes),
        batch_size=1,
        codec=pick("codec", codec, codecs),
        payload_bytes=pick(
            "payload_bytes",
            0 if codec == "none" else len(payload),
            st.one_of(u64, st.sampled_from([len(payload) - 1, len(payload) + 1])),
        ),
    )
    return header, payload


@fuzz(400)
@given(push=pushes(), chunk=st.integers(1, 300))
def test_push(shard: ShardUnderTest, push: tuple[ps_pb2.PushHeader, bytes], chunk: int) -> None:
    header, payload = push
    messages = [ps_pb2.PushChunk(header=header).SerializeToString()]
    messages += [framing.frame(payload[i : i + chunk]) for i in range(0, len(payload), chunk)]
    before = shard.fingerprint(header.job_id)
    outcome = call(shard, "Push", messages)
    assert_precise(outcome, REFUSED, str(header))
    shard.check(before, outcome, "Push")
    if outcome.code == grpc.StatusCode.OK:
        reply = ps_pb2.PushReply.FromString(outcome.replies[0])
        assert reply.outcome != ps_pb2.PUSH_OUTCOME_UNSPECIFIED or reply.duplicate, reply


def _header(job_id: str = GUARDED, seq: int = 1) -> bytes:
    header = ps_pb2.PushHeader(
        job_id=job_id, worker_id=MEMBER, seq=seq, length=LENGTH, dtype=common_pb2.DTYPE_FLOAT32
    )
    return ps_pb2.PushChunk(header=header).SerializeToString()


# Streams out of order: data before the header, two headers, a header alone, too much or too
# little data, data as a protobuf-built chunk, nothing at all. A member's push to the guarded
# job with a fresh high seq, so only the stream's shape can refuse it.
stream_shapes = st.sampled_from(
    [
        [],
        ["data"],
        ["data", "header"],
        ["header", "header"],
        ["header", "data", "header"],
        ["header"],
        ["header", "half"],
        ["header", "data", "data"],
        ["header", "half", "half", "half"],
        ["header", "empty", "empty"],
    ]
)


@fuzz(100)
@given(shape=stream_shapes, seq=st.integers(2**40, 2**60))
def test_push_stream_shapes(shard: ShardUnderTest, shape: list[str], seq: int) -> None:
    parts = {
        "header": _header(seq=seq),
        "data": data_chunk(LENGTH),
        "half": data_chunk(LENGTH // 2),
        "empty": framing.frame(b""),
    }
    before = shard.fingerprint()
    outcome = call(shard, "Push", [parts[p] for p in shape])
    assert_precise(outcome, REFUSED, str(shape))
    complete = shape in (["header", "data"], ["header", "half", "half"])
    assert outcome.code != grpc.StatusCode.OK or complete, (shape, outcome)
    shard.check(before, outcome, f"Push {shape}")


@fuzz(40)
@given(data_chunks=st.integers(0, 1), seq=st.integers(2**40, 2**60))
def test_push_cancelled_mid_stream_changes_nothing(
    shard: ShardUnderTest, data_chunks: int, seq: int
) -> None:
    before = shard.fingerprint()
    messages = [_header(seq=seq)] + [data_chunk(LENGTH // 2)] * data_chunks
    outcome = shard.raw.cancelled_stream(PS + "Push", messages)
    assert outcome.code == grpc.StatusCode.CANCELLED, outcome
    shard.check(before, outcome, "cancelled Push")
