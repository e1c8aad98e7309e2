"""Fuzzing every Coordinator RPC on a real coordinator (with a real shard): every call ends OK
or with a precise refusal, the coordinator keeps serving, and a refused call leaves the list of
jobs and the running job's state, epoch, steps and progress as they were."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.fuzz.conftest import (
    CO,
    REFUSED,
    CoordinatorUnderTest,
    Outcome,
    assert_precise,
    fuzz,
    serving,
    wait_for,
)

U64 = 2**64 - 1
RPCS = {
    "SubmitJob": "stream",
    "GetJob": "unary",
    "ListJobs": "unary",
    "CancelJob": "unary",
    "GetMetrics": "unary",
    "FetchModel": "server_stream",
    "ClusterStatus": "unary",
    "RegisterWorker": "unary",
    "Heartbeat": "unary",
    "AcquireTask": "unary",
    "CompleteTask": "unary",
    "ReportProgress": "unary",
    "ReportFailure": "unary",
    "GetJobPlan": "unary",
    "FetchBlob": "server_stream",
}
# Calls that only read: they may name the running job itself.
READS = ("GetJob", "GetMetrics", "FetchModel", "GetJobPlan", "FetchBlob")

ids = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "j-00000000", "../etc", "j-\x00", "🙂", "a" * 300]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
u32 = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**32 - 1]))
u64 = st.one_of(st.integers(0, 4), st.sampled_from([2**63, U64]))


def send(co: CoordinatorUnderTest, rpc: str, messages: list[bytes]) -> Outcome:
    kind = RPCS[rpc]
    if kind == "unary":
        outcome = co.raw.unary(CO + rpc, messages[0] if messages else b"")
    elif kind == "server_stream":
        outcome = co.raw.server_stream(CO + rpc, messages[0] if messages else b"")
    else:
        outcome = co.raw.client_stream(CO + rpc, messages)
    if currently_in_test_context():
        event(f"{rpc}: {outcome.code.name} {outcome.details[:40]}")
    return outcome


def exchange(co: CoordinatorUnderTest, rpc: str, messages: list[bytes]) -> Outcome:
    """One fuzzed call with the invariants checked around it."""
    before = co.fingerprint()
    outcome = send(co, rpc, messages)
    assert_precise(outcome, REFUSED, f"{rpc} {messages[:1]!r}")
    co.check(before, outcome, rpc)
    return outcome


@fuzz(300)
@given(
    rpc=st.sampled_from(sorted(RPCS)),
    messages=st.lists(st.binary(max_size=64), max_size=4),
)
def test_random_bytes(coordinator: CoordinatorUnderTest, rpc: str, messages: list[bytes]) -> None:
    if rpc in ("CancelJob", "ReportFailure", "FetchModel") and coordinator.job_id.encode() in (
        b"".join(messages)
    ):
        return  # naming the running job: a legitimate change (or a known bug); never drawn
    before = coordinator.fingerprint()
    outcome = send(coordinator, rpc, messages)
    assert_precise(outcome, REFUSED, f"{rpc} {messages!r}")
    coordinator.check(before, outcome, rpc)


@fuzz(200)
@given(
    rpc=st.sampled_from([*READS, "CancelJob"]),
    job_id=st.one_of(ids, st.just("RUNNING")),
    blob=st.one_of(st.sampled_from(["dataset", "initial_state", "model"]), ids),
)
def test_job_queries(coordinator: CoordinatorUnderTest, rpc: str, job_id: str, blob: str) -> None:
    if job_id == "RUNNING":
        if rpc == "CancelJob":
            return  # cancelling the running job is a legitimate change
        job_id = coordinator.job_id
    if rpc == "FetchBlob":
        request: Any = co_pb2.FetchBlobRequest(job_id=job_id, blob=blob)
    else:
        request = co_pb2.GetJobRequest(job_id=job_id)
    outcome = exchange(coordinator, rpc, [request.SerializeToString()])
    if job_id == coordinator.job_id and rpc in ("GetJob", "GetMetrics", "GetJobPlan"):
        assert outcome.code == grpc.StatusCode.OK, outcome


REGISTERED = "fz-known"
_NAMES = itertools.count()


@fuzz(80)
@given(
    host=st.text(max_size=20),
    pid=u32,
    device=st.one_of(st.sampled_from(["cpu", "cuda:0", ""]), st.text(max_size=10)),
    worker_id=st.one_of(st.just(""), st.just(REGISTERED), ids.map(lambda s: f"fz-{s}")),
)
def test_register_and_heartbeat(
    coordinator: CoordinatorUnderTest, host: str, pid: int, device: str, worker_id: str
) -> None:
    request = co_pb2.RegisterWorkerRequest(host=host, pid=pid, device=device, worker_id=worker_id)
    outcome = exchange(coordinator, "RegisterWorker", [request.SerializeToString()])
    if outcome.code == grpc.StatusCode.OK:
        reply = co_pb2.RegisterWorkerReply.FromString(outcome.replies[0])
        assert reply.worker_id and reply.heartbeat_seconds > 0
        beat = co_pb2.HeartbeatRequest(worker_id=reply.worker_id).SerializeToString()
        outcome = exchange(coordinator, "Heartbeat", [beat])
        assert co_pb2.HeartbeatReply.FromString(outcome.replies[0]).known


workers = st.one_of(st.just(REGISTERED), ids)
steps = st.builds(
    co_pb2.StepMetric,
    step=u64,
    loss=floats,
    samples=u32,
    worker_id=ids,
    epoch=u32,
    unix_time=floats,
)
progress = st.builds(
    co_pb2.LeaseProgress,
    lease_id=ids,
    position=u32,
    batches=u32,
    busy_seconds=floats,
    step_seconds=floats,
)


@st.composite
def worker_calls(draw: st.DrawFn, job_id: str) -> tuple[str, bytes]:
    rpc = draw(st.sampled_from(["Heartbeat", "AcquireTask", "CompleteTask", "ReportProgress"]))
    worker_id = draw(workers)
    job = draw(st.one_of(st.just(job_id), ids))
    request: Any
    if rpc == "Heartbeat":
        request = co_pb2.HeartbeatRequest(worker_id=worker_id)
    elif rpc == "AcquireTask":
        request = co_pb2.AcquireTaskRequest(worker_id=worker_id)
    elif rpc == "CompleteTask":
        request = co_pb2.CompleteTaskRequest(
            worker_id=worker_id,
            lease_id=draw(ids),
            test_accuracy=draw(floats),
            test_loss=draw(floats),
            samples=draw(u64),
        )
    else:
        request = co_pb2.ReportProgressRequest(
            worker_id=worker_id,
            job_id=job,
            steps=draw(st.lists(steps, max_size=3)),
            lease=draw(st.one_of(st.none(), progress)),
        )
    return rpc, request.SerializeToString()


@fuzz(300)
@given(data=st.data())
def test_worker_calls(coordinator: CoordinatorUnderTest, data: st.DataObject) -> None:
    register = co_pb2.RegisterWorkerRequest(host="fuzz", pid=1, worker_id=REGISTERED)
    assert send(coordinator, "RegisterWorker", [register.SerializeToString()]).code.name == "OK"
    rpc, request = data.draw(worker_calls(coordinator.job_id))
    exchange(coordinator, rpc, [request])


@fuzz(100)
@given(worker_id=workers, job_id=ids, error=st.text(max_size=40))
def test_report_failure_of_unknown_jobs(
    coordinator: CoordinatorUnderTest, worker_id: str, job_id: str, error: str
) -> None:
    request = co_pb2.ReportFailureRequest(worker_id=worker_id, job_id=job_id, error=error)
    exchange(coordinator, "ReportFailure", [request.SerializeToString()])


@fuzz(20)
@given(rpc=st.sampled_from(["ListJobs", "ClusterStatus"]), junk=st.binary(max_size=20))
def test_listings(coordinator: CoordinatorUnderTest, rpc: str, junk: bytes) -> None:
    # Unknown fields (number 99) beside an empty request: skipped, the call answers.
    message = bytes([0x9A, 0x06, len(junk)]) + junk
    outcome = exchange(coordinator, rpc, [message])
    assert outcome.code == grpc.StatusCode.OK, outcome


# --- SubmitJob ---

SPEC_FIELDS = (
    *("name", "source", "class_name", "kwargs_json", "params", "mode", "staleness"),
    *("optimizer", "epochs", "batch_size", "partitions", "shards", "loss", "compression"),
    *("backup_workers", "stragglers", "dataset", "initial_state"),
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
        assert send(coordinator, "CancelJob", [request]).code == grpc.StatusCode.OK


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
    outcome = coordinator.raw.cancelled_stream(
        CO + "SubmitJob", coordinator.submission.chunks()[: keep + 1]
    )
    assert outcome.code == grpc.StatusCode.CANCELLED, outcome
    assert serving(coordinator.raw)
    assert coordinator.fingerprint() == before


# --- bugs found by fuzzing, fixed ---


def test_report_failure_needs_a_worker_of_the_job(coordinator: CoordinatorUnderTest) -> None:
    outcome = send(coordinator, "SubmitJob", coordinator.submission.chunks())
    assert outcome.code == grpc.StatusCode.OK, outcome
    job_id = co_pb2.JobInfo.FromString(outcome.replies[0]).job_id
    wait_for("the job to run", lambda: coordinator.job(job_id).state == "running")
    try:
        request = co_pb2.ReportFailureRequest(
            worker_id=f"nobody-{next(_NAMES)}", job_id=job_id, error="boom"
        )
        outcome = send(coordinator, "ReportFailure", [request.SerializeToString()])
        assert outcome.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
        assert coordinator.job(job_id).state == "running"
    finally:
        send(coordinator, "CancelJob", [co_pb2.GetJobRequest(job_id=job_id).SerializeToString()])


def test_fetch_model_of_a_running_job(coordinator: CoordinatorUnderTest) -> None:
    request = co_pb2.GetJobRequest(job_id=coordinator.job_id).SerializeToString()
    outcome = send(coordinator, "FetchModel", [request])
    assert outcome.code == grpc.StatusCode.OK, outcome
