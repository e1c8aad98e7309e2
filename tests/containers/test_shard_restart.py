"""A shard container whose server process crashes mid-job: compose's restart policy starts it
again, it recovers its jobs from its volume (write-ahead log and checkpoints) and the job
finishes at its target. (That no acknowledged push is lost is proven on a shard process in
tests/server/test_recovery_process.py, where the test itself is the pusher.)"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pscluster.client.sdk import Client
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.containers.compose import ComposeProject, run_docker
from tests.containers.conftest import JOB_TIMEOUT, WORKERS
from tests.support import UNREACHABLE, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow]

# SIGKILL the shard's server process (not the container's init): a crash, not a `docker stop`,
# so the restart policy applies. The image has no procps; /proc is enough.
CRASH = (
    "import os, signal\n"
    "for p in os.listdir('/proc'):\n"
    "    if p.isdigit() and int(p) not in (1, os.getpid()):\n"
    "        cmd = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
    "        if b'shard' in cmd:\n"
    "            os.kill(int(p), signal.SIGKILL)\n"
)


def shard_stats(client: Client, job_id: str) -> list[Any]:
    reply = client._stub.GetMetrics(co_pb2.GetJobRequest(job_id=job_id), timeout=30)
    return list(reply.shards)


def restarts(container: str) -> int:
    out = run_docker(["inspect", "--format", "{{json .RestartCount}}", container], timeout=60)
    return int(json.loads(out))


def test_a_crashed_shard_is_restarted_and_recovers_its_job(
    compose: ComposeProject, client: Client, digits_job: dict[str, Any], target_accuracy: float
) -> None:
    # Prepare: a job that runs long enough to crash a shard in the middle of it
    compose.up(workers=WORKERS)
    job = client.submit(**{**digits_job, "epochs": 2 * digits_job["epochs"], "name": "crash"})
    wait_for(lambda: job.info().steps >= 30, 180, what="30 steps", poll=0.5, tolerate=UNREACHABLE)
    container = compose.containers("ps")[0]
    before = restarts(container)

    # Execute
    crashed = time.monotonic()
    run_docker(["exec", container, "python3", "-c", CRASH], timeout=60)
    wait_for(
        lambda: restarts(container) > before,
        60,
        what="compose restarts the shard",
        poll=0.5,
        tolerate=UNREACHABLE,
    )
    wait_for(
        lambda: any(
            s.records_replayed or s.checkpoint_version for s in shard_stats(client, job.id)
        ),
        120,
        what="the shard serves its recovered job",
        poll=0.5,
        tolerate=UNREACHABLE,
    )
    recovered = time.monotonic() - crashed
    info = job.wait(timeout=JOB_TIMEOUT)

    # Assert
    shards = shard_stats(client, job.id)
    print(
        f"\n[shard crash] back serving after {recovered:.1f}s; replayed "
        f"{[s.records_replayed for s in shards]} records; accuracy {info.test_accuracy}"
    )
    assert info.state == "completed", info
    assert info.test_accuracy is not None and info.test_accuracy >= target_accuracy
    assert all(s.durable for s in shards)
