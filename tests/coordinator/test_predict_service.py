"""Predict jobs on a real coordinator, the worker played by hand over real sockets: outputs
handed in by partition in any order come back in input order, what does not fit is refused
without changing anything, and a restarted coordinator finishes the job from its parts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

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
    get_job,
    submit,
    wait_for_job,
)
from tests.support import MODEL_SOURCE, rpc_failure, tiny_job

ROWS, PARTITIONS = 10, 3  # partitions of 4, 3 and 3 rows
PREDICT = co_pb2.TASK_KIND_PREDICT


def predict_stream(**changes: object) -> Iterator[co_pb2.SubmitJobChunk]:
    """A SubmitJob stream scoring ROWS rows with the tests' ``Plain`` model, uploaded; the
    spec's predict fields (``output``, ``rows``, ``model_job``) and ``precision`` as asked."""
    model = source.build(MODEL_SOURCE, "Plain", json.dumps({"n_in": 4, "n_out": 3}))
    predict = co_pb2.PredictSpec(output="logits", rows=ROWS)
    for key in ("output", "rows", "model_job"):
        if key in changes:
            setattr(predict, key, changes[key])
    spec = co_pb2.JobSpec(
        name="scoring",
        partitions=PARTITIONS,
        precision=str(changes.get("precision", "")),
        predict=predict,
    )
    blobs = {"dataset": predict_inputs.to_blob(torch.randn(ROWS, 4))}
    if not predict.model_job:
        spec.model.CopyFrom(co_pb2.ModelSpec(source=MODEL_SOURCE, class_name="Plain"))
        blobs["initial_state"] = state.dumps(model.state_dict())
    yield co_pb2.SubmitJobChunk(spec=spec)
    for name, data in blobs.items():
        yield co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=name, data=data))
    total = sum(len(d) for d in blobs.values())
    yield co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=total))


def hand_in(
    worker: HandWorker, task: co_pb2.Task, outputs: torch.Tensor, cut: int = 0
) -> co_pb2.CompleteTaskReply:
    """The partition's outputs as a worker sends them, in pieces of 8 bytes (``cut`` bytes
    fewer: an upload cut short)."""
    raw = outputs.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    raw = raw[: len(raw) - cut]
    first = co_pb2.PredictionChunk(
        worker_id=worker.worker_id,
        lease_id=task.lease_id,
        dtype="float32" if outputs.dtype == torch.float32 else "int64",
        shape=list(outputs.shape),
        seconds={"score": 0.25},
        data=raw[:8],
    )
    rest = [co_pb2.PredictionChunk(data=raw[i : i + 8]) for i in range(8, len(raw), 8)]
    return worker.stub.CompletePrediction(iter([first, *rest]), timeout=RPC_TIMEOUT)


def rows_of(task: co_pb2.Task) -> torch.Tensor:
    """Outputs that say where they belong: each row holds its input row's index."""
    r = predict_inputs.partition_range(ROWS, task.partitions, task.partition)
    return torch.arange(r.start, r.end, dtype=torch.float32).reshape(-1, 1).repeat(1, 2)


def fetch(running: Running, job_id: str) -> tuple[co_pb2.PredictionChunk, bytes]:
    chunks = list(
        running.stub.FetchPredictions(co_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)
    )
    return chunks[0], b"".join(c.data for c in chunks)


def test_partitions_handed_in_out_of_order_come_back_in_input_order(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: three workers each hold one partition.
    running = make_coordinator(shards.addresses)
    info = running.stub.SubmitJob(predict_stream(), timeout=RPC_TIMEOUT)
    workers = [HandWorker(running.stub, shards) for _ in range(PARTITIONS)]
    tasks = [w.acquire() for w in workers]
    assert [(t.kind, t.partition) for t in tasks] == [(PREDICT, p) for p in range(PARTITIONS)]

    # Execute: the last partition first.
    for i in (2, 0, 1):
        hand_in(workers[i], tasks[i], rows_of(tasks[i]))
    wait_for_job(running.stub, info.job_id, "completed")
    header, data = fetch(running, info.job_id)

    # Assert
    assert (header.dtype, list(header.shape)) == ("float32", [ROWS, 2])
    got = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(ROWS, 2)
    assert torch.equal(got[:, 0], torch.arange(ROWS, dtype=torch.float32))
    done = get_job(running.stub, info.job_id)
    assert (done.kind, done.progress, done.mode) == ("predict", 1.0, "")
    metrics = running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=info.job_id), timeout=30)
    assert metrics.predict_seconds["score"] == pytest.approx(0.25 * PARTITIONS)
    assert metrics.predict_seconds["receive"] > 0


def test_outputs_that_do_not_fit_are_refused_and_the_lease_stands(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    info = running.stub.SubmitJob(predict_stream(), timeout=RPC_TIMEOUT)
    worker, other = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    task, theirs = worker.acquire(), other.acquire()
    right = rows_of(task)

    # Execute / Assert: each refusal names what is wrong.
    code, why = rpc_failure(lambda: hand_in(worker, task, right[1:]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "has 4 rows" in why
    code, why = rpc_failure(lambda: hand_in(worker, task, right, cut=4))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "cut short" in why
    code, _ = rpc_failure(lambda: hand_in(other, task, right))  # not its lease
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, why = rpc_failure(lambda: fetch(running, info.job_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "still being scored" in why
    hand_in(worker, task, right)  # the lease stood through every refusal
    wider = torch.zeros(rows_of(theirs).shape[0], 5)
    code, why = rpc_failure(lambda: hand_in(other, theirs, wider))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must not depend on the rows" in why
    assert get_job(running.stub, info.job_id).state == "running"


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [
        ({"output": "softmax"}, grpc.StatusCode.INVALID_ARGUMENT, "output 'softmax' is unknown"),
        ({"rows": ROWS + 1}, grpc.StatusCode.INVALID_ARGUMENT, f"inputs have {ROWS} rows"),
        ({"precision": "fp16"}, grpc.StatusCode.INVALID_ARGUMENT, "not offered for inference"),
        ({"model_job": "j-nothere"}, grpc.StatusCode.NOT_FOUND, "unknown job"),
        ({"model_job": "RUNNING"}, grpc.StatusCode.FAILED_PRECONDITION, "no trained model yet"),
    ],
)
def test_a_predict_submission_that_cannot_run_is_refused_at_the_door(
    shards: Shards,
    make_coordinator: Callable[..., Running],
    changes: dict[str, object],
    code: grpc.StatusCode,
    words: str,
) -> None:
    # Prepare: "RUNNING" stands for a training job that has no model yet.
    running = make_coordinator(shards.addresses)
    if changes.get("model_job") == "RUNNING":
        changes = {"model_job": submit(running.stub, tiny_job(epochs=5)).job_id}
    before = len(running.stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs)

    # Execute
    got, why = rpc_failure(
        lambda: running.stub.SubmitJob(predict_stream(**changes), timeout=RPC_TIMEOUT)
    )

    # Assert: refused, and no job was created.
    assert got == code and words in why, why
    after = running.stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs
    assert len(after) == before


def test_a_restarted_coordinator_finishes_a_predict_job_from_its_stored_parts(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: one partition handed in, another held, the third not leased.
    running = make_coordinator(shards.addresses)
    info = running.stub.SubmitJob(predict_stream(), timeout=RPC_TIMEOUT)
    worker = HandWorker(running.stub, shards)
    first = worker.acquire()
    hand_in(worker, first, rows_of(first))
    held = worker.acquire()

    # Execute: restart, then hand in the held lease and the last partition.
    running.close()
    again = make_coordinator(shards.addresses)
    worker.stub = again.stub
    assert worker.heartbeat().known
    hand_in(worker, held, rows_of(held))
    last = worker.acquire()
    assert (last.kind, last.partition) == (PREDICT, 2)
    hand_in(worker, last, rows_of(last))
    wait_for_job(again.stub, info.job_id, "completed")

    # Assert
    _, data = fetch(again, info.job_id)
    got = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(ROWS, 2)
    assert torch.equal(got[:, 0], torch.arange(ROWS, dtype=torch.float32))
