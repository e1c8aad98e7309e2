"""Fuzzing SubmitJob on a real coordinator: the valid tiny submission with one or two fields
made wrong, streams of the wrong shape, uploads cancelled half-way. A refused submission leaves
the list of jobs as it was; an accepted one is cancelled so that the cluster stays idle."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from hypothesis import given
from hypothesis import strategies as st

from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.fuzz.conftest import CoordinatorUnderTest, fuzz
from tests.fuzz.coordinator_inputs import call, exchange, floats, ids, u32, u64
from tests.fuzz.raw import CO, serving

SPEC_FIELDS = (
    *("name", "source", "class_name", "kwargs_json", "params", "mode", "staleness"),
    *("optimizer", "epochs", "batch_size", "partitions", "shards", "loss", "compression"),
    *("backup_workers", "stragglers", "dataset", "initial_state", "end"),
)


@st.composite
def submissions(draw: st.DrawFn, valid: co_pb2.JobSpec, blobs: dict[str, bytes]) -> list[bytes]:
    """The valid tiny submission with one or two fields made wrong."""
    mutated = draw(st.sets(st.sampled_from(SPEC_FIELDS), min_size=1, max_size=2))
    spec = co_pb2.JobSpec()
    spec.CopyFrom(valid)
    model = spec.model
    for field in mutated:
        if field == "name":
            spec.name = draw(st.one_of(st.text(max_size=10), st.just("n" * 201)))
        elif field == "source":
            model.source = draw(st.one_of(st.text(max_size=30), st.just("def (:"), st.just("")))
        elif field == "class_name":
            model.class_name = draw(st.one_of(ids, st.sampled_from(["class", "Missing", "1x"])))
        elif field == "kwargs_json":
            model.kwargs_json = draw(st.one_of(ids, st.sampled_from(["[]", "{", '{"n_in": 5}'])))
        elif field == "params":
            del model.params[:]
            for _ in range(draw(st.integers(0, 3))):
                shape = draw(st.lists(st.one_of(st.integers(0, 5), u64), max_size=3))
                model.params.add(name=draw(st.sampled_from(["fc.weight", "fc.bias", ""])))
                model.params[-1].shape.extend(shape)
        elif field == "mode":
            spec.mode = draw(ids)
        elif field == "staleness":
            spec.staleness = draw(u32)
        elif field == "optimizer":
            spec.optimizer.CopyFrom(
                common_pb2.OptimizerConfig(name=draw(ids), lr=draw(floats), eps=draw(floats))
            )
        elif field in ("epochs", "batch_size", "partitions", "shards", "backup_workers"):
            setattr(spec, field, draw(u32))
        elif field == "loss":
            spec.loss = draw(ids)
        elif field == "compression":
            spec.compression.CopyFrom(
                common_pb2.CompressionConfig(name=draw(ids), ratio=draw(floats))
            )
        elif field == "stragglers":
            spec.stragglers.CopyFrom(
                co_pb2.StragglerConfig(
                    factor=draw(floats), alpha=draw(floats), grace_seconds=draw(floats)
                )
            )
    data = dict(blobs)
    for name in ("dataset", "initial_state"):
        if name in mutated:
            data[name] = draw(
                st.one_of(
                    st.binary(max_size=200),
                    st.integers(0, len(blobs[name]) - 1).map(_prefix(blobs[name])),
                )
            )
    out = [co_pb2.SubmitJobChunk(spec=spec).SerializeToString()]
    for name, blob in data.items():
        for i in range(0, max(len(blob), 1), 4096):
            piece = common_pb2.BlobChunk(blob=name, data=blob[i : i + 4096])
            out.append(co_pb2.SubmitJobChunk(blob=piece).SerializeToString())
    total = sum(len(blob) for blob in data.values())
    said: int | None = total
    if "end" in mutated:  # no end message, or one that miscounts the bytes
        said = draw(st.one_of(st.none(), st.integers(0, 2 * total).filter(lambda n: n != total)))
    if said is not None:
        end = co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=said))
        out.append(end.SerializeToString())
    return out


def _prefix(blob: bytes) -> Callable[[int], bytes]:
    return lambda n: blob[:n]


@fuzz(120)
@given(data=st.data())
def test_submit_job(coordinator: CoordinatorUnderTest, data: st.DataObject) -> None:
    sub = coordinator.submission
    chunks = data.draw(submissions(sub.spec, sub.blobs))
    outcome = exchange(coordinator, "SubmitJob", chunks)
    if outcome.code == grpc.StatusCode.OK:  # still valid: cancel it so the cluster stays idle
        job_id = co_pb2.JobInfo.FromString(outcome.replies[0]).job_id
        request = co_pb2.GetJobRequest(job_id=job_id).SerializeToString()
        assert call(coordinator, "CancelJob", [request]).code == grpc.StatusCode.OK


@fuzz(40)
@given(
    shape=st.sampled_from(
        [
            [],
            ["dataset"],
            ["dataset", "spec", "initial_state"],
            ["spec", "spec", "dataset", "initial_state"],
            ["spec", "dataset"],
            ["spec", "initial_state"],
            ["spec", "dataset", "initial_state", "unknown"],
            ["spec", "empty", "dataset", "initial_state"],
        ]
    )
)
def test_submit_job_stream_shapes(coordinator: CoordinatorUnderTest, shape: list[str]) -> None:
    sub = coordinator.submission
    parts = {
        "spec": co_pb2.SubmitJobChunk(spec=sub.spec),
        "dataset": co_pb2.SubmitJobChunk(
            blob=common_pb2.BlobChunk(blob="dataset", data=sub.blobs["dataset"])
        ),
        "initial_state": co_pb2.SubmitJobChunk(
            blob=common_pb2.BlobChunk(blob="initial_state", data=sub.blobs["initial_state"])
        ),
        "unknown": co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob="weights", data=b"x")),
        "empty": co_pb2.SubmitJobChunk(),
    }
    outcome = exchange(coordinator, "SubmitJob", [parts[p].SerializeToString() for p in shape])
    assert outcome.code != grpc.StatusCode.OK, shape


@fuzz(15)
@given(keep=st.integers(0, 2))
def test_submit_job_cancelled_mid_stream(coordinator: CoordinatorUnderTest, keep: int) -> None:
    before = coordinator.fingerprint()
    # Up to the whole submission but its end message: gRPC may show the server the cancel as
    # a stream that ended, and only the end message tells the two apart.
    unfinished = coordinator.submission.serialized()[:-1]
    outcome = coordinator.raw.cancelled_stream(CO + "SubmitJob", unfinished[: keep + 1])
    assert outcome.code == grpc.StatusCode.CANCELLED, outcome
    assert serving(coordinator.raw)
    assert coordinator.fingerprint() == before
