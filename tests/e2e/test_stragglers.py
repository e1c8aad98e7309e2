"""One worker five times slower than the others: found, reported and worked around.

The straggler is a real worker process with ``PSC_SLOWDOWN=5`` (it stretches its own time on
every batch fivefold, as a slower machine would), among three normal ones on two shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pscluster.client.info import JobInfo
from pscluster.client.local import LocalCluster
from pscluster.client.metrics import JobMetrics
from pscluster.client.spec_file import load_job_file
from tests.e2e.conftest import start_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STRAGGLER = "straggler"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("stragglers"), shards=2, workers=3)
    try:
        c.add_worker(wait=True, env={"PSC_SLOWDOWN": "5", "PSC_WORKER_ID": STRAGGLER})
        yield c
    finally:
        c.stop()


def train(cluster: LocalCluster, **overrides: Any) -> JobMetrics:
    return train_job(cluster, **overrides)[1]


def train_job(cluster: LocalCluster, **overrides: Any) -> tuple[JobInfo, JobMetrics]:
    """The completed job's final info and its metrics."""
    job_file = load_job_file(ROOT / "examples" / "digits.yaml")
    with cluster.client() as client:
        job = client.submit(**{**job_file.submit_kwargs(), **overrides})
        info = job.wait(timeout=600)
        assert info.state == "completed", info.error or info.status_message
        return info, job.metrics()


def assert_straggler_found(m: JobMetrics) -> None:
    speeds = {w.worker: w for w in m.workers}
    assert speeds[STRAGGLER].straggler, speeds
    slowdown = speeds[STRAGGLER].slowdown
    assert slowdown > 2.0
    # On a machine busy with other work a normal worker may be flagged too for a while (CI
    # beside two busy processes flagged one); it must still be far less slow than the one
    # five times slower.
    others = {w: speeds[w].slowdown for w in m.stragglers if w != STRAGGLER}
    assert all(s < slowdown / 1.5 for s in others.values()), (slowdown, others)
    flagged = [e for e in m.events if e.kind == "straggler"]
    assert any(e.worker == STRAGGLER for e in flagged), m.events


def test_sync_with_a_backup_worker_closes_steps_without_the_straggler(
    cluster: LocalCluster,
) -> None:
    _, m = train_job(cluster, mode="sync", backup_workers=1)
    assert (m.final_accuracy or 0.0) >= 0.95
    assert_straggler_found(m)
    # Its pushes arrive after the three others closed the step: dropped and counted, by the
    # shards (one per shard refusing) and as the batches the workers trained nothing on.
    assert m.pushes_rejected.get("late", 0) > 0
    late = m.batches_dropped.get("late", 0)
    assert 0 < late <= m.pushes_rejected["late"], (m.batches_dropped, m.pushes_rejected)
    dropped = [e for e in m.events if e.kind == "batches_dropped"]
    assert any(e.worker == STRAGGLER and "late" in e.message for e in dropped), m.events
    # A dropped batch is in no sample count: what the job says it trained on (by its final
    # evaluation) is at most what its reported steps add up to (a lease lost midway reports
    # steps it never completes).
    assert m.epochs[-1].samples <= sum(s.samples for s in m.steps)
    steps = m.pushes_by_worker
    assert steps.get(STRAGGLER, 0) < min(n for w, n in steps.items() if w != STRAGGLER)


def test_ssp_stops_waiting_for_the_straggler_and_keeps_its_bound(cluster: LocalCluster) -> None:
    m = train(cluster, mode="ssp", staleness=2, stragglers={"grace_seconds": 1.0})
    assert (m.final_accuracy or 0.0) >= 0.95
    assert_straggler_found(m)
    assert any(e.kind == "excluded" and e.worker == STRAGGLER for e in m.events), m.events
    # Excluding the straggler from the slowest clock does not loosen the bound on what is
    # applied: its pushes older than s clocks are refused.
    for shard in m.shards:
        assert max(shard.clock_staleness, default=0) <= 2
        assert shard.max_clock_lead <= 2


def test_detection_only_leaves_leases_alone(cluster: LocalCluster) -> None:
    m = train(cluster, mode="async", epochs=5, stragglers={"no_mitigation": True})
    assert_straggler_found(m)
    assert not [e for e in m.events if e.kind in ("split", "excluded")]
