"""A job from submission to saved model, with the worker played by hand over real sockets,
and what a coordinator restarted on the same state dir still knows."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc
import torch

from pscluster.model import state
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.coordinator.conftest import (
    RPC_TIMEOUT,
    WAIT,
    HandWorker,
    Running,
    Shards,
    fetch_model,
    get_job,
    plan_of,
    submit,
    wait_for_job,
)
from tests.support import TinyJob, rpc_code, tiny_job, wait_for

LR = 0.1


def metrics_of(running: Running, job_id: str) -> co_pb2.JobMetrics:
    return running.stub.GetMetrics(co_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)


TRAIN, EVAL = co_pb2.TASK_KIND_TRAIN, co_pb2.TASK_KIND_EVAL
# Two epochs of three partitions, each epoch closed by its evaluation.
ORDER = [(TRAIN, 0, 0), (TRAIN, 0, 1), (TRAIN, 0, 2), (EVAL, 0, 0)]
ORDER += [(TRAIN, 1, 0), (TRAIN, 1, 1), (TRAIN, 1, 2), (EVAL, 1, 0)]


def test_a_job_runs_to_a_saved_model_and_survives_a_restart(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    job = tiny_job(epochs=2, partitions=3, lr=LR)
    info = submit(running.stub, job)
    assert (info.state, info.epochs, info.num_params) == ("running", 2, job.layout.size)
    assert info.job_id.startswith("j-") and info.test_accuracy == -1 and info.last_loss == -1
    plan = plan_of(running.stub, info.job_id)
    assert [(p.address, p.start, p.length) for p in plan.shards] == [
        (shards.addresses[0], 0, 8),
        (shards.addresses[1], 8, 7),
    ]
    assert plan.spec.partitions == 3 and plan.num_params == 15
    worker = HandWorker(running.stub, shards)

    # Execute: play the worker until the job completes.
    seen = _play_until_saved(running, shards, worker, job, plan)
    wait_for_job(running.stub, info.job_id, "completed")

    # Assert: the order of work, then the job's end state.
    assert seen == ORDER
    _assert_completed(running, info.job_id, worker.worker_id)
    model_bytes = _assert_saved_model(running, shards, job, plan)

    # Execute: a new coordinator on the same state dir.
    running.close()
    again = make_coordinator(shards.addresses)

    # Assert: the job, its metrics and its model are still served.
    listed = again.stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT)
    assert [(j.job_id, j.state) for j in listed.jobs] == [(info.job_id, "completed")]
    restored = metrics_of(again, info.job_id)
    assert len(restored.steps) == 6 and len(restored.epochs) == 2
    assert restored.pushes_applied == 12 and dict(restored.pushes_by_worker) == {
        worker.worker_id: 6
    }
    assert fetch_model(again.stub, info.job_id) == model_bytes


def _play_until_saved(
    running: Running, shards: Shards, worker: HandWorker, job: TinyJob, plan: co_pb2.JobPlan
) -> list[tuple[int, int, int]]:
    """Train (a push of ones per lease) and evaluate until the last epoch's evaluation, checking
    on the way what a running job shows; the tasks handed out, in order."""
    seen: list[tuple[int, int, int]] = []
    pushes = 0
    for _ in range(20):
        task = worker.acquire()
        seen.append((task.kind, task.epoch, task.partition))
        if task.kind == TRAIN:
            assert task.partitions == 3 and task.lease_seconds > 0
            # The membership is in place on every shard before the task was handed over.
            for part in plan.shards:
                assert worker.worker_id in shards.stats(part.address, plan.job_id).members
            replies = worker.push_ones(plan)
            assert [r.outcome for r in replies] == [ps_pb2.PUSH_OUTCOME_APPLIED] * 2
            pushes += 1
            worker.report(plan.job_id, task.epoch, [1.0 / pushes])
            if pushes == 1:
                # A running job's model and metrics come live from the shards.
                live = state.loads(fetch_model(running.stub, plan.job_id))
                assert torch.allclose(live["fc.bias"], job.initial["fc.bias"] - LR)
                assert metrics_of(running, plan.job_id).pushes_applied == 2
            worker.complete(task)
        elif task.kind == EVAL:
            worker.complete(task, accuracy=0.5 + 0.1 * task.epoch, loss=2.0 - task.epoch)
            if task.epoch == 1:  # the last epoch's evaluation: the job saves its model
                break
    return seen


def _assert_completed(running: Running, job_id: str, worker_id: str) -> None:
    done = get_job(running.stub, job_id)
    assert (done.state, done.epoch, done.progress, done.steps) == ("completed", 2, 1.0, 6)
    assert abs(done.test_accuracy - 0.6) < 1e-9 and abs(done.last_loss - 1 / 6) < 1e-9
    assert done.finished_unix >= done.started_unix >= done.created_unix > 0
    assert list(done.workers) == []
    metrics = metrics_of(running, job_id)
    assert [s.step for s in metrics.steps] == [1, 2, 3, 4, 5, 6]
    assert [(e.epoch, round(e.test_accuracy, 6)) for e in metrics.epochs] == [(0, 0.5), (1, 0.6)]
    assert dict(metrics.pushes_by_worker) == {worker_id: 6}
    assert metrics.pushes_applied == 12 and len(metrics.shards) == 2


def _assert_saved_model(
    running: Running, shards: Shards, job: TinyJob, plan: co_pb2.JobPlan
) -> bytes:
    """The saved model is six SGD steps on ones from the initial state, and the shards forgot
    the job; the model's bytes."""
    model_bytes = fetch_model(running.stub, plan.job_id)
    model = state.loads(model_bytes)
    assert set(model) == {"fc.weight", "fc.bias", "scale"}
    for name in ("fc.weight", "fc.bias"):  # six pushes of ones at lr 0.1
        assert torch.allclose(model[name], job.initial[name] - LR * 6, atol=1e-6)
    assert torch.equal(model["scale"], job.initial["scale"])  # the buffer rides along
    for part in plan.shards:
        code = rpc_code(partial(shards.stats, part.address, plan.job_id))
        assert code == grpc.StatusCode.NOT_FOUND
    return model_bytes


def test_a_restarted_coordinator_resumes_a_running_job(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: sync mode, one partition done, the worker holding the next one.
    running = make_coordinator(shards.addresses)
    job = tiny_job(mode="sync", epochs=2, partitions=2)
    info = submit(running.stub, job)
    plan = plan_of(running.stub, info.job_id)
    worker = HandWorker(running.stub, shards)
    first = worker.acquire()
    # Sync: a lone member's push closes the barrier at once, so it is applied.
    assert [r.outcome for r in worker.push_ones(plan)] == [ps_pb2.PUSH_OUTCOME_APPLIED] * 2
    worker.complete(first)
    held = worker.acquire()
    assert (held.epoch, held.partition) == (0, 1)

    # Execute
    running.close()
    again = make_coordinator(shards.addresses)
    worker.stub = again.stub

    # Assert: progress kept; the lease the worker was training on is still its own (it kept
    # training through the outage), its membership sent again under a newer generation.
    resumed = get_job(again.stub, info.job_id)
    assert (resumed.state, resumed.epoch, resumed.progress) == ("running", 0, 0.25)
    assert worker.heartbeat().known
    wait_for(
        lambda: all(
            list(shards.stats(p.address, info.job_id).members) == [worker.worker_id]
            for p in plan.shards
        ),
        WAIT,
        what="the shards' memberships to be sent again",
    )
    worker.complete(held)
    task = worker.acquire()
    assert (task.kind, task.epoch) == (co_pb2.TASK_KIND_EVAL, 0)
    # A process that registers under the id afresh holds nothing: the restored lease is gone.
    back = HandWorker(again.stub, shards, worker_id=worker.worker_id)
    assert rpc_code(lambda: worker.complete(task)) == grpc.StatusCode.FAILED_PRECONDITION
    again_task = back.acquire()
    assert (again_task.kind, again_task.epoch) == (co_pb2.TASK_KIND_EVAL, 0)
