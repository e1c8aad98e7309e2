"""A worker container cut off the cluster network for 20 s (ssp): declared dead, its lease
reclaimed and its membership dropped; back on the network it registers again and trains; no
push more than ``staleness`` clocks behind is ever applied."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from pscluster.client.sdk import Client, Job
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.containers.compose import ComposeProject, run_docker
from tests.containers.conftest import JOB_TIMEOUT
from tests.support import UNREACHABLE, wait_for

pytestmark = pytest.mark.slow

STALENESS = 2
CUT_SECONDS = 20.0


def live_shards(client: Client, job_id: str) -> list[Any]:
    # Raw stats, every field (the SDK's rows keep the usual ones): the client's own stub.
    reply = client._stub.GetMetrics(co_pb2.GetJobRequest(job_id=job_id), timeout=30)
    return list(reply.shards)


def reached_after(job: Any, since_monotonic: float, target: float) -> bool:
    """Whether an evaluation made after ``since`` (a monotonic time) reached ``target``."""
    since = time.time() - (time.monotonic() - since_monotonic)
    return any(e.unix_time >= since and e.test_accuracy >= target for e in job.metrics().epochs)


def test_a_partitioned_worker_is_dropped_then_rejoins_without_stale_pushes(
    compose: ComposeProject, client: Client, digits_job: dict[str, Any], target_accuracy: float
) -> None:
    # Prepare: an ssp job long enough to outlast the partition (three workers train an epoch
    # of digits in about 0.4 s here: 30 epochs were over before the worker was back), the
    # worker to cut off, found by its hostname (the container id's first 12 characters).
    job = client.submit(**{**digits_job, "mode": "ssp", "staleness": STALENESS, "epochs": 200})
    wait_for(lambda: job.info().steps >= 30, 180, what="30 steps", poll=0.5, tolerate=UNREACHABLE)
    container = compose.containers("worker")[0]
    hostnames = {w.host: w for w in client.status().workers if w.alive}
    victim = hostnames[container[:12]].worker_id

    # Execute
    detected, members = _partition(compose, client, container, victim, job.id)
    back = time.monotonic()
    rejoined = _pushes_again(job, victim, container) - back
    # The job need not run its 200 epochs (on a busy machine that outlasts any fixed
    # timeout): once an evaluation after the rejoin reaches the target, it has shown what it
    # must, and is cancelled.
    wait_for(
        lambda: reached_after(job, back, target_accuracy),
        JOB_TIMEOUT,
        what="an evaluation after the rejoin at the target accuracy",
        poll=0.5,
        tolerate=UNREACHABLE,
    )
    shards = live_shards(client, job.id)
    info = job.cancel()

    # Assert
    worst = max((int(k) for s in shards for k in s.clock_staleness), default=0)
    refused = {
        r: sum(int(s.pushes_rejected.get(r, 0)) for s in shards) for r in ("stale", "not_member")
    }
    print(
        f"\n[partition {CUT_SECONDS:g} s] detect={detected:.2f}s rejoin={rejoined:.2f}s "
        f"max clock staleness={worst} (s={STALENESS}) refused={refused} "
        f"accuracy={info.test_accuracy} after {info.epoch} epochs"
    )
    assert all(victim not in m for m in members), members
    assert worst <= STALENESS  # and the target was reached after the rejoin (waited above)


def _partition(
    compose: ComposeProject, client: Client, container: str, victim: str, job_id: str
) -> tuple[float, list[set[str]]]:
    """Cut the worker's container off the cluster network for CUT_SECONDS: how long until the
    coordinator declared it dead, and the shards' members then."""
    network = f"{compose.name}_cluster"
    cut = time.monotonic()
    run_docker(["network", "disconnect", network, container], timeout=60)
    try:
        dead = wait_for(
            lambda: not {w.worker_id: w for w in client.status().workers}[victim].alive,
            CUT_SECONDS,
            what="the cut-off worker declared dead",
            poll=0.5,
            tolerate=UNREACHABLE,
        )
        members = [set(s.members) for s in live_shards(client, job_id)]
        # The partition lasts CUT_SECONDS whenever it was noticed: its length is under test.
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut)))
    finally:
        run_docker(["network", "connect", network, container], timeout=60)
    return dead - cut, members


def _pushes_again(job: Job, victim: str, container: str) -> float:
    """When the worker, back on the network, pushed again (monotonic)."""
    pushes_before = job.metrics().pushes_by_worker.get(victim, 0)
    return wait_for(
        lambda: job.metrics().pushes_by_worker.get(victim, 0) > pushes_before,
        120,
        what="the worker to push again",
        poll=0.5,
        tolerate=UNREACHABLE,
        context=lambda: f"the worker's last lines:\n{_logs(container)}",
    )


def _logs(container: str) -> str:
    command = ["docker", "logs", "--tail", "80", container]
    logs = subprocess.run(command, capture_output=True, text=True, timeout=60)  # to stderr
    return logs.stdout + logs.stderr
