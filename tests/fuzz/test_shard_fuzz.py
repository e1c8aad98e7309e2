"""Fuzzing every ParameterServer RPC on a real shard: whatever comes in, the call ends OK or
with a precise refusal, the shard keeps serving, and a refused call leaves the parameters of
the jobs made before the fuzzing (checksum and version) as they were."""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import grpc
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from pscluster.compression import CompressionSettings, make_compressor
from pscluster.transport import framing
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import (
    FIXTURE_JOBS,
    GUARDED,
    LENGTH,
    MEMBER,
    PS,
    REFUSED,
    SCRATCH,
    Outcome,
    ShardUnderTest,
    assert_precise,
    fuzz,
    serving,
)

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

RPCS = {
    "InitJob": "stream",
    "SetMembers": "unary",
    "Pull": "server_stream",
    "Push": "stream",
    "GetJobStats": "unary",
    "DropJob": "unary",
}


def send(shard: ShardUnderTest, rpc: str, messages: list[bytes]) -> Outcome:
    kind = RPCS[rpc]
    if kind == "unary":
        outcome = shard.raw.unary(PS + rpc, messages[0] if messages else b"")
    elif kind == "server_stream":
        outcome = shard.raw.server_stream(PS + rpc, messages[0] if messages else b"")
    else:
        outcome = shard.raw.client_stream(PS + rpc, messages)
    # --hypothesis-show-statistics shows how the examples ended: a fuzz test whose calls all
    # fail the same early check fuzzes little.
    if currently_in_test_context():
        event(f"{rpc}: {outcome.code.name} {outcome.details[:40]}")
    return outcome


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
    rpc=st.sampled_from(sorted(RPCS)),
    messages=st.lists(st.one_of(st.binary(max_size=64), unknown_fields()), max_size=4),
)
def test_random_bytes(shard: ShardUnderTest, rpc: str, messages: list[bytes]) -> None:
    before = shard.fingerprint()
    outcome = send(shard, rpc, messages)
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
    outcome = send(shard, "SetMembers", [request.SerializeToString()])
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
    outcome = send(shard, "Pull", [request.SerializeToString()])
    assert_precise(outcome, PULL_CODES, str(request))
    shard.check(before, outcome, "Pull")
    if outcome.code == grpc.StatusCode.OK:
        header = ps_pb2.PullChunk.FromString(outcome.replies[0]).header
        payload = b"".join(framing.data_of(r) or b"" for r in outcome.replies[1:])
        itemsize = 4 if header.dtype == common_pb2.DTYPE_FLOAT32 else 2
        assert len(payload) == header.length * itemsize == LENGTH * itemsize


def float_bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


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
    outcome = send(shard, "Push", messages)
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


def _data(n: int) -> bytes:
    return framing.frame(float_bytes([0.5] * n))


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
        "data": _data(LENGTH),
        "half": _data(LENGTH // 2),
        "empty": framing.frame(b""),
    }
    before = shard.fingerprint()
    outcome = send(shard, "Push", [parts[p] for p in shape])
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
    messages = [_header(seq=seq)] + [_data(LENGTH // 2)] * data_chunks
    outcome = shard.raw.cancelled_stream(PS + "Push", messages)
    assert outcome.code == grpc.StatusCode.CANCELLED, outcome
    shard.check(before, outcome, "cancelled Push")


# --- InitJob ---

optimizers = st.builds(
    common_pb2.OptimizerConfig,
    name=st.one_of(st.sampled_from(["sgd", "adam", "adamw", "SGD ", ""]), ids),
    lr=st.one_of(st.just(0.1), floats),
    momentum=st.one_of(st.just(0.0), floats),
    dampening=st.one_of(st.just(0.0), floats),
    nesterov=st.booleans(),
    weight_decay=st.one_of(st.just(0.0), floats),
    beta1=st.one_of(st.just(0.0), floats),
    beta2=st.one_of(st.just(0.0), floats),
    eps=st.one_of(st.just(0.0), floats),
)
compressions = st.builds(
    common_pb2.CompressionConfig,
    name=codecs,
    ratio=st.one_of(st.just(0.0), floats),
    momentum=st.one_of(st.just(0.0), floats),
    clip_norm=st.one_of(st.just(0.0), floats),
    warmup_epochs=u32,
    pull_dtype=dtypes,
)


@fuzz(250)
@given(
    job_id=job_ids,
    start=u64,
    # Lengths the shard could hold: an announced huge length is test_oversize's business.
    length=st.integers(0, 300),
    mode=st.one_of(st.sampled_from(["async", "sync", "ssp"]), ids),
    staleness=u32,
    optimizer=optimizers,
    compression=compressions,
    backup_workers=u32,
    staleness_aware_lr=st.booleans(),
    values=st.one_of(
        st.none(),  # exactly `length` float32 values
        st.binary(max_size=1300),
    ),
    chunk=st.integers(1, 500),
)
def test_init_job(
    shard: ShardUnderTest,
    job_id: str,
    start: int,
    length: int,
    mode: str,
    staleness: int,
    optimizer: common_pb2.OptimizerConfig,
    compression: common_pb2.CompressionConfig,
    backup_workers: int,
    staleness_aware_lr: bool,
    values: bytes | None,
    chunk: int,
) -> None:
    config = ps_pb2.ShardJobConfig(
        job_id=job_id,
        start=start,
        length=length,
        mode=mode,
        staleness=staleness,
        optimizer=optimizer,
        compression=compression,
        backup_workers=backup_workers,
        staleness_aware_lr=staleness_aware_lr,
    )
    data = float_bytes([0.25] * length) if values is None else values
    messages = [ps_pb2.InitJobChunk(config=config).SerializeToString()]
    messages += [framing.frame(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    existed = job_id in FIXTURE_JOBS or _exists(shard, job_id)
    before = shard.fingerprint()
    outcome = send(shard, "InitJob", messages)
    assert_precise(outcome, REFUSED, str(config))
    shard.check(before, outcome, "InitJob")
    if existed:
        assert outcome.code != grpc.StatusCode.OK, f"InitJob of existing job {job_id!r} succeeded"
    elif outcome.code != grpc.StatusCode.OK:
        assert not _exists(shard, job_id), f"refused InitJob left job {job_id!r} behind"
    else:
        reply = ps_pb2.InitJobReply.FromString(outcome.replies[0])
        assert math.isclose(reply.checksum, 0.25 * length, abs_tol=1e-6)
        send(shard, "DropJob", [ps_pb2.DropJobRequest(job_id=job_id).SerializeToString()])


def _exists(shard: ShardUnderTest, job_id: str) -> bool:
    request = ps_pb2.JobStatsRequest(job_id=job_id).SerializeToString()
    return shard.raw.unary(PS + "GetJobStats", request).code == grpc.StatusCode.OK


def _config(job_id: str, length: int = 8) -> bytes:
    config = ps_pb2.ShardJobConfig(
        job_id=job_id,
        length=length,
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1),
    )
    return ps_pb2.InitJobChunk(config=config).SerializeToString()


@fuzz(60)
@given(
    shape=st.sampled_from(
        [
            [],
            ["data"],
            ["data", "config"],
            ["config", "config", "data"],
            ["config", "data", "config"],
            ["config"],
            ["config", "half"],
            ["config", "data", "half"],
        ]
    ),
    name=st.text(alphabet="abcdefgh", min_size=4, max_size=8),
)
def test_init_job_stream_shapes(shard: ShardUnderTest, shape: list[str], name: str) -> None:
    job_id = f"shape-{name}"
    parts = {"config": _config(job_id), "data": _data(8), "half": _data(4)}
    outcome = send(shard, "InitJob", [parts[p] for p in shape])
    assert_precise(outcome, REFUSED, str(shape))
    assert outcome.code != grpc.StatusCode.OK, shape
    assert not _exists(shard, job_id) or outcome.code == grpc.StatusCode.ALREADY_EXISTS


@fuzz(30)
@given(name=st.text(alphabet="abcdefgh", min_size=4, max_size=8), with_data=st.booleans())
def test_init_job_cancelled_mid_stream_leaves_no_job(
    shard: ShardUnderTest, name: str, with_data: bool
) -> None:
    job_id = f"cancel-{name}"
    messages = [_config(job_id)] + ([_data(4)] if with_data else [])
    outcome = shard.raw.cancelled_stream(PS + "InitJob", messages)
    assert outcome.code == grpc.StatusCode.CANCELLED, outcome
    assert serving(shard.raw)
    assert not _exists(shard, job_id)


# --- GetJobStats and DropJob ---


@fuzz(150)
@given(rpc=st.sampled_from(["GetJobStats", "DropJob"]), job_id=ids)
def test_stats_and_drop_of_unknown_jobs(shard: ShardUnderTest, rpc: str, job_id: str) -> None:
    if job_id in FIXTURE_JOBS:
        return
    request = ps_pb2.JobStatsRequest(job_id=job_id).SerializeToString()  # same field as DropJob
    before = shard.fingerprint()
    outcome = send(shard, rpc, [request])
    assert_precise(outcome, {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}, rpc)
    shard.check(before, outcome, rpc)
