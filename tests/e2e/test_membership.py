"""Workers come and go while a job runs: joiners take part, a killed worker stops nothing."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pscluster.client.local import LocalCluster
from pscluster.client.sdk import Job
from tests.e2e.conftest import start_cluster
from tests.faults.harness import submit as submit_digits
from tests.support import wait_for

pytestmark = pytest.mark.slow


def submit(cluster: LocalCluster, mode: str, epochs: int) -> Job:
    with cluster.client() as client:
        return submit_digits(client, mode, epochs)


def wait_for_steps(job: Job, steps: int, timeout: float) -> None:
    wait_for(lambda: job.info().steps >= steps, timeout, what=f"{steps} steps", poll=0.2)


def test_a_worker_started_mid_job_joins_it(tmp_path: Path) -> None:
    # Prepare: a job long enough that it is still running when the new worker arrives on any
    # machine (a GPU worker finishes 8 epochs of digits in seconds); it is cancelled once the
    # newcomer has pushed.
    cluster = start_cluster(tmp_path, shards=2, workers=1)
    try:
        with cluster.client() as client:
            job = client.job(submit(cluster, "ssp", epochs=500).id)
            wait_for_steps(job, 20, timeout=120)
            first = set(job.metrics().pushes_by_worker)

            # Execute
            cluster.add_worker(wait=True)
            wait_for(
                lambda: len(job.metrics().pushes_by_worker) >= 2,
                120,
                what="the newcomer to push",
                poll=0.5,
            )
            info = job.info()
            metrics = job.metrics()
            job.cancel()
    finally:
        cluster.stop()

    # Assert
    assert info.state == "running", "the job was still running when the newcomer pushed"
    assert len(first) == 1
    assert len(metrics.pushes_by_worker) == 2, metrics.pushes_by_worker
    newcomer = (set(metrics.pushes_by_worker) - first).pop()
    assert metrics.pushes_by_worker[newcomer] > 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_worker_killed_mid_job_does_not_stop_it(tmp_path: Path, mode: str) -> None:
    # Prepare: 12 epochs, so the target is within reach with one worker fewer for most of the
    # job (at 8, async once ended at 0.947 in CI).
    cluster = start_cluster(tmp_path, shards=2, workers=3)
    try:
        with cluster.client() as client:
            job = client.job(submit(cluster, mode, epochs=12).id)
            wait_for_steps(job, 30, timeout=120)

            # Execute: a crash, not a shutdown; its lease must expire and be re-leased.
            cluster.kill_worker(0, signal.SIGKILL)
            info = job.wait(timeout=300)
    finally:
        cluster.stop()

    # Assert
    assert info.state == "completed", info.error
    assert info.test_accuracy is not None and info.test_accuracy >= 0.95
