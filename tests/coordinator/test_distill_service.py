"""Distillation jobs at a real coordinator, the worker played by hand over real sockets: the
teacher's code goes into the job's plan and its saved model is served as the job's "teacher"
blob (after a restart too), an event names the teacher, and a request that cannot be
distilled is refused at the door without creating anything, whatever the SDK let through."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest
import torch

from pscluster.data import predict_inputs
from pscluster.model import source, state
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import (
    RPC_TIMEOUT,
    HandWorker,
    Running,
    Shards,
    fetch_model,
    plan_of,
    submit,
    wait_for_job,
)
from tests.support import MODEL_SOURCE, TinyJob, rpc_failure, tiny_job

TRAIN, EVAL = co_pb2.TASK_KIND_TRAIN, co_pb2.TASK_KIND_EVAL


def completed_teacher(running: Running, shards: Shards) -> str:
    """A one-epoch, one-partition job of ``Tiny`` played to its saved model; its id."""
    info = submit(running.stub, tiny_job(model="Tiny", name="teacher", epochs=1, partitions=1))
    worker = HandWorker(running.stub, shards)
    for kind in (TRAIN, EVAL):
        task = worker.acquire()
        assert task.kind == kind
        worker.complete(task)
    wait_for_job(running.stub, info.job_id, "completed")
    return info.job_id


def student(teacher: str, **distill: object) -> TinyJob:
    """A job of ``Plain`` distilled from ``teacher`` (T 4, alpha 0.7 unless changed)."""
    job = tiny_job(model="Plain", name="student")
    job.spec.distill.CopyFrom(co_pb2.DistillSpec(teacher_job=teacher, temperature=4.0, alpha=0.7))
    for key, value in distill.items():
        setattr(job.spec.distill, key, value)
    return job


def blob(running: Running, job_id: str, name: str) -> bytes:
    request = co_pb2.FetchBlobRequest(job_id=job_id, blob=name)
    return b"".join(c.data for c in running.stub.FetchBlob(request, timeout=RPC_TIMEOUT))


def predict_job(running: Running) -> str:
    """A predict job (an uploaded model scoring 4 rows): it has no model of its own."""
    model = source.build(MODEL_SOURCE, "Plain", json.dumps({}))
    spec = co_pb2.JobSpec(
        name="scoring",
        model=co_pb2.ModelSpec(source=MODEL_SOURCE, class_name="Plain"),
        predict=co_pb2.PredictSpec(output="logits", rows=4),
    )
    blobs = {
        "dataset": predict_inputs.to_blob(torch.randn(4, 4)),
        "initial_state": state.dumps(model.state_dict()),
    }
    chunks = [co_pb2.SubmitJobChunk(spec=spec)]
    chunks += [
        co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=n, data=d)) for n, d in blobs.items()
    ]
    total = sum(len(d) for d in blobs.values())
    chunks.append(co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=total)))
    return running.stub.SubmitJob(iter(chunks), timeout=RPC_TIMEOUT).job_id


def test_the_teacher_goes_with_the_job_and_stays_after_a_restart(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: a student whose spec carries code that is not the teacher's.
    running = make_coordinator(shards.addresses)
    teacher = completed_teacher(running, shards)
    job = student(teacher)
    job.spec.distill.teacher_model.CopyFrom(co_pb2.ModelSpec(source="import os", class_name="X"))

    # Execute
    info = submit(running.stub, job)

    # Assert: the plan has the teacher's own code, the blob is its saved model, an event
    # names it.
    plan = plan_of(running.stub, info.job_id)
    teacher_plan = plan_of(running.stub, teacher)
    assert plan.spec.distill.teacher_model == teacher_plan.spec.model
    assert plan.spec.distill.temperature == 4.0
    assert plan.spec.distill.alpha == pytest.approx(0.7)
    saved = fetch_model(running.stub, teacher)
    assert blob(running, info.job_id, "teacher") == saved
    metrics = running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=info.job_id), timeout=30)
    events = [(e.kind, e.message) for e in metrics.events]
    assert events == [
        (
            "distilled",
            f"distilled from teacher {teacher} (teacher, 15 parameters) at temperature "
            "4, alpha 0.7",
        )
    ]

    # Execute: a new coordinator on the same state.
    running.close()
    again = make_coordinator(shards.addresses)

    # Assert
    assert blob(again, info.job_id, "teacher") == saved
    assert plan_of(again.stub, info.job_id).spec.distill.teacher_model == teacher_plan.spec.model


def test_a_job_that_does_not_distill_has_no_teacher_blob(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job())

    code, why = rpc_failure(lambda: blob(running, info.job_id, "teacher"))

    assert code == grpc.StatusCode.NOT_FOUND and "has no teacher blob" in why


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("unknown", grpc.StatusCode.NOT_FOUND, "'j-nothere' is an unknown job"),
        ("empty", grpc.StatusCode.INVALID_ARGUMENT, "distill.teacher_job is empty"),
        ("running", grpc.StatusCode.FAILED_PRECONDITION, "is running: distill from a completed"),
        ("predict", grpc.StatusCode.INVALID_ARGUMENT, "is a predict job: it has no model"),
        ("temperature", grpc.StatusCode.INVALID_ARGUMENT, "temperature must be > 0"),
        ("alpha", grpc.StatusCode.INVALID_ARGUMENT, "alpha must be in [0, 1]"),
        ("loss", grpc.StatusCode.INVALID_ARGUMENT, "the student's loss must be one of"),
    ],
)
def test_what_cannot_be_distilled_is_refused_and_nothing_is_created(
    shards: Shards,
    make_coordinator: Callable[..., Running],
    case: str,
    code: grpc.StatusCode,
    words: str,
) -> None:
    # Prepare: each case a teacher, or a request, that cannot work.
    running = make_coordinator(shards.addresses)
    teacher = {
        "unknown": "j-nothere",
        "empty": "",
        "running": submit(running.stub, tiny_job(epochs=5)).job_id,
        "predict": predict_job(running),
    }.get(case, "j-any")
    job = student(teacher)
    if case == "temperature":
        job.spec.distill.temperature = 0.0
    elif case == "alpha":
        job.spec.distill.alpha = 1.5
    elif case == "loss":
        job.spec.loss = "mse"
    before = running.stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs

    # Execute
    got, why = rpc_failure(lambda: submit(running.stub, job))

    # Assert
    assert got == code and words in why, why
    after = running.stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs
    assert len(after) == len(before)
