"""Shards scaled with compose under a running job: `docker compose up --scale ps=3`, the new
replica registers under its container's name, `scale-shards 3` moves the job onto it, then
`scale-shards 2` drains the one `--scale ps=2` removes, and the job reaches its target with
every acknowledged update kept (each shard's version equals the steps the workers reported).
The same moves between local processes, with their failures: tests/e2e/test_scale_shards.py."""

from __future__ import annotations

from typing import Any

import pytest

from pscluster.client.sdk import Client
from tests.containers.compose import ComposeProject
from tests.containers.conftest import JOB_TIMEOUT, WORKERS
from tests.faults.harness import lost_updates, raw_metrics
from tests.support import UNREACHABLE, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def live_shards(client: Client) -> list[str]:
    return sorted(s.shard_id for s in client.status().registry if s.live)


def test_a_job_moves_onto_a_scaled_up_replica_and_back_losing_nothing(
    compose: ComposeProject, client: Client, digits_job: dict[str, Any], target_accuracy: float
) -> None:
    # Prepare: a long async job on the two replicas
    names = [f"{compose.name}-ps-{i}" for i in (1, 2, 3)]
    compose.up(workers=WORKERS)
    job = client.submit(
        **{**digits_job, "mode": "async", "epochs": 3 * digits_job["epochs"], "name": "scale"}
    )
    wait_for(lambda: job.info().steps >= 30, 180, what="30 steps", poll=0.5, tolerate=UNREACHABLE)

    # Execute: a replica more, the job moved onto it; then drained and the replica removed
    compose.up(workers=WORKERS, shards=3)
    wait_for(lambda: live_shards(client) == names, 60, what=f"{names} live", poll=0.5)
    grown = client.scale_shards(3)
    steps = job.info().steps
    wait_for(lambda: job.info().steps >= steps + 60, 180, what="60 steps on 3 shards", poll=0.5)
    shrunk = client.scale_shards(2)
    compose.up(workers=WORKERS, shards=2)
    info = job.wait(timeout=JOB_TIMEOUT)
    counts = lost_updates(info, list(raw_metrics(compose.address, job.id).shards))

    # Assert
    assert grown.shard_ids == tuple(names)
    assert [(m.moved, m.shard_ids) for m in grown.jobs] == [(True, tuple(names))], grown
    assert shrunk.shard_ids == tuple(names[:2])  # not the replica compose removes
    assert [(m.moved, m.shard_ids) for m in shrunk.jobs] == [(True, tuple(names[:2]))], shrunk
    assert len(compose.containers("ps")) == 2
    assert info.state == "completed", info.error
    assert info.test_accuracy is not None and info.test_accuracy >= target_accuracy
    assert counts == {"lost": 0, "unreported": 0}, (counts, info.steps)
