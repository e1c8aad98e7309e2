"""Jobs on the compose cluster, driven by the SDK from the host: train, scale, lose a worker,
restart the cluster."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pscluster.client.info import WorkerInfo
from pscluster.client.sdk import Client, Job
from tests.containers.compose import ComposeProject, run_docker
from tests.containers.conftest import JOB_TIMEOUT, WORKERS
from tests.support import UNREACHABLE, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def trained_steps(job: Job) -> bool:
    """True once the job runs and its workers have reported training steps."""
    info = job.info()
    if info.done:
        raise AssertionError(f"job {job.id} ended before the test could act: {info}")
    return info.state == "running" and info.steps > 0


def local_accuracy(digits_job: dict[str, Any], state: dict[str, torch.Tensor]) -> float:
    model = digits_job["model"](**digits_job["model_kwargs"])
    model.load_state_dict(state)
    model.eval()
    x, y = digits_job["test"]
    with torch.no_grad():
        predicted = model(torch.as_tensor(x)).argmax(1)
    return float((predicted == torch.as_tensor(y)).float().mean())


def test_the_sdk_on_the_host_trains_digits_to_the_target(
    client: Client, finished_job: str, target_accuracy: float
) -> None:
    # Execute (the cluster ran the job in the finished_job fixture)
    job = client.job(finished_job)
    info = job.info()
    metrics = job.metrics()

    # Assert
    assert info.state == "completed"
    assert metrics.final_accuracy is not None
    assert metrics.final_accuracy >= target_accuracy, metrics.epochs
    assert metrics.pushes_applied > 0


def test_workers_added_while_a_job_runs_take_part_in_it(
    compose: ComposeProject, client: Client, digits_job: dict[str, Any]
) -> None:
    # Prepare: 3 workers, and a job long enough (3x the example's epochs) that workers started
    # after it can join before it ends.
    compose.up(workers=3)
    job = client.submit(**{**digits_job, "epochs": 3 * digits_job["epochs"], "name": "scale"})
    wait_for(lambda: trained_steps(job), 120, what="the job trains", poll=0.5, tolerate=UNREACHABLE)

    # Execute
    compose.up(workers=5)
    info = job.wait(timeout=JOB_TIMEOUT)

    # Assert: pushes from more than the 3 original worker processes were applied
    pushes = job.metrics().pushes_by_worker
    assert info.state == "completed"
    assert len(compose.containers("worker")) == 5
    assert len([w for w, n in pushes.items() if n > 0]) > 3, pushes


def test_a_worker_killed_mid_job_leaves_the_job_to_the_others(
    compose: ComposeProject,
    client: Client,
    digits_job: dict[str, Any],
    target_accuracy: float,
) -> None:
    # Prepare
    compose.up(workers=WORKERS)
    job = client.submit(**{**digits_job, "name": "kill"})
    wait_for(lambda: trained_steps(job), 120, what="the job trains", poll=0.5, tolerate=UNREACHABLE)
    training: list[WorkerInfo] = []

    def a_worker_holds_a_task() -> bool:
        training[:] = [w for w in client.status().workers if w.alive and w.job_id == job.id]
        return bool(training)

    wait_for(
        a_worker_holds_a_task,
        60,
        what="a worker holds a task of the job",
        poll=0.1,
        tolerate=UNREACHABLE,
    )
    victim = training[0]

    # Execute: SIGKILL, no goodbye; its container's hostname is its container id
    run_docker(["kill", victim.host], timeout=60)
    info = job.wait(timeout=JOB_TIMEOUT)

    # Assert
    metrics = job.metrics()
    assert info.state == "completed"
    assert metrics.final_accuracy is not None
    assert metrics.final_accuracy >= target_accuracy, metrics.epochs
    wait_for(
        lambda: (
            not any(w.alive for w in client.status().workers if w.worker_id == victim.worker_id)
        ),
        30,
        what="the coordinator declares the killed worker dead",
        poll=0.5,
        tolerate=UNREACHABLE,
    )


def test_down_and_up_keep_finished_jobs_and_their_models(
    compose: ComposeProject, finished_job: str, digits_job: dict[str, Any]
) -> None:
    # Prepare
    with Client(compose.address) as before:
        accuracy = before.job(finished_job).metrics().final_accuracy
    assert accuracy is not None

    # Execute: containers and networks go, the named volume stays
    compose.down(volumes=False)
    assert compose.volumes(), "down without -v removed the state volume"
    compose.up(workers=WORKERS)
    with Client(compose.address) as after:
        job = after.job(finished_job)
        info = job.info()
        state = job.fetch_model()

    # Assert: the same job, and a model that scores what the cluster measured (one sample of
    # slack for a logit tie broken differently by a batched evaluation)
    assert info.state == "completed"
    one_sample = 1.0 / len(digits_job["test"][1])
    assert abs(local_accuracy(digits_job, state) - accuracy) <= one_sample
