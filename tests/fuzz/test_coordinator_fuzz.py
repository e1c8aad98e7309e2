"""Fuzzing every Coordinator RPC on a real coordinator (with a real shard): every call ends OK
or with a precise refusal, the coordinator keeps serving, and a refused call leaves the list of
jobs and the running job's state, epoch, steps and progress as they were. SubmitJob, fuzzed
deeper: test_submit_fuzz.py."""

from __future__ import annotations

import itertools
from typing import Any

import grpc
from hypothesis import given
from hypothesis import strategies as st

from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.fuzz.conftest import CoordinatorUnderTest, fuzz
from tests.fuzz.coordinator_inputs import call, exchange, floats, ids, u32, u64
from tests.fuzz.raw import REFUSED, assert_precise
from tests.support import COORDINATOR_RPCS, wait_for

# Calls that only read: they may name the running job itself.
READS = ("GetJob", "GetMetrics", "FetchModel", "GetJobPlan", "FetchBlob")


@fuzz(300)
@given(
    rpc=st.sampled_from(sorted(COORDINATOR_RPCS)),
    messages=st.lists(st.binary(max_size=64), max_size=4),
)
def test_random_bytes(coordinator: CoordinatorUnderTest, rpc: str, messages: list[bytes]) -> None:
    if rpc in ("CancelJob", "ReportFailure", "FetchModel") and coordinator.job_id.encode() in (
        b"".join(messages)
    ):
        return  # naming the running job: a legitimate change (or a known bug); never drawn
    before = coordinator.fingerprint()
    outcome = call(coordinator, rpc, messages)
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
    assert call(coordinator, "RegisterWorker", [register.SerializeToString()]).code.name == "OK"
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


# --- bugs found by fuzzing, fixed ---


def test_report_failure_needs_a_worker_of_the_job(coordinator: CoordinatorUnderTest) -> None:
    outcome = call(coordinator, "SubmitJob", coordinator.submission.serialized())
    assert outcome.code == grpc.StatusCode.OK, outcome
    job_id = co_pb2.JobInfo.FromString(outcome.replies[0]).job_id
    wait_for(lambda: coordinator.job(job_id).state == "running", 20, what="the job to run")
    try:
        request = co_pb2.ReportFailureRequest(
            worker_id=f"nobody-{next(_NAMES)}", job_id=job_id, error="boom"
        )
        outcome = call(coordinator, "ReportFailure", [request.SerializeToString()])
        assert outcome.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
        assert coordinator.job(job_id).state == "running"
    finally:
        call(coordinator, "CancelJob", [co_pb2.GetJobRequest(job_id=job_id).SerializeToString()])


def test_fetch_model_of_a_running_job(coordinator: CoordinatorUnderTest) -> None:
    request = co_pb2.GetJobRequest(job_id=coordinator.job_id).SerializeToString()
    outcome = call(coordinator, "FetchModel", [request])
    assert outcome.code == grpc.StatusCode.OK, outcome
