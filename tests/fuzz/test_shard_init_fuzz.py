"""Fuzzing InitJob on a real shard: configs with any field, payloads of any size and shape,
streams cancelled half-way; a refused InitJob leaves no job behind."""

from __future__ import annotations

import math

import grpc
from hypothesis import given
from hypothesis import strategies as st

from pscluster.transport import framing
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import FIXTURE_JOBS, ShardUnderTest, fuzz
from tests.fuzz.raw import PS, REFUSED, assert_precise, serving
from tests.fuzz.shard_inputs import (
    call,
    codecs,
    data_chunk,
    dtypes,
    float_bytes,
    floats,
    ids,
    job_exists,
    job_ids,
    u32,
    u64,
)

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
    existed = job_id in FIXTURE_JOBS or job_exists(shard, job_id)
    before = shard.fingerprint()
    outcome = call(shard, "InitJob", messages)
    assert_precise(outcome, REFUSED, str(config))
    shard.check(before, outcome, "InitJob")
    if existed:
        assert outcome.code != grpc.StatusCode.OK, f"InitJob of existing job {job_id!r} succeeded"
    elif outcome.code != grpc.StatusCode.OK:
        assert not job_exists(shard, job_id), f"refused InitJob left job {job_id!r} behind"
    else:
        reply = ps_pb2.InitJobReply.FromString(outcome.replies[0])
        assert math.isclose(reply.checksum, 0.25 * length, abs_tol=1e-6)
        call(shard, "DropJob", [ps_pb2.DropJobRequest(job_id=job_id).SerializeToString()])


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
    parts = {"config": _config(job_id), "data": data_chunk(8), "half": data_chunk(4)}
    outcome = call(shard, "InitJob", [parts[p] for p in shape])
    assert_precise(outcome, REFUSED, str(shape))
    assert outcome.code != grpc.StatusCode.OK, shape
    assert not job_exists(shard, job_id) or outcome.code == grpc.StatusCode.ALREADY_EXISTS


@fuzz(30)
@given(name=st.text(alphabet="abcdefgh", min_size=4, max_size=8), with_data=st.booleans())
def test_init_job_cancelled_mid_stream_leaves_no_job(
    shard: ShardUnderTest, name: str, with_data: bool
) -> None:
    job_id = f"cancel-{name}"
    messages = [_config(job_id)] + ([data_chunk(4)] if with_data else [])
    outcome = shard.raw.cancelled_stream(PS + "InitJob", messages)
    assert outcome.code == grpc.StatusCode.CANCELLED, outcome
    assert serving(shard.raw)
    assert not job_exists(shard, job_id)
