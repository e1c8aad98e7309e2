"""A local cluster with metrics on: the coordinator, shard and worker processes each serve
their series while a job trains, the three agree on what was done, and with
PSC_LOG_FORMAT=json the worker's lines about the job carry the job's and the worker's ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pscluster.client.info import JobInfo
from pscluster.client.local import LocalCluster
from pscluster.client.metrics import JobMetrics
from pscluster.client.spec_file import load_job_file
from tests.support import wait_for
from tests.telemetry.conftest import Samples, json_lines, scrape, total, value

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "PSC_HEARTBEAT_SECONDS": "0.5",
    "PSC_WORKER_TIMEOUT_SECONDS": "3",
    "PSC_PULL_WAIT_SECONDS": "5",
    "PSC_LOG_FORMAT": "json",
    # Lease grants are logged at DEBUG (hundreds a second on a large cluster).
    "PSC_LOG_LEVEL": "DEBUG",
}

pytestmark = pytest.mark.slow


@dataclass
class Run:
    """The job, and the coordinator's and the shard's series as scraped while it ran."""

    info: JobInfo
    final: JobMetrics  # the shard's counters, saved when the job ended
    coordinator: Samples
    shard: Samples


def test_every_process_serves_metrics_that_agree_and_logs_json(tmp_path: Path) -> None:
    # Prepare: 1 shard, 1 worker, so that the three processes' counts must be equal.
    example = load_job_file(ROOT / "examples" / "digits.yaml")
    kwargs = {**example.submit_kwargs(), "mode": "async", "epochs": 3}
    cluster = LocalCluster(shards=1, workers=1, state_dir=tmp_path, env=FAST, metrics=True)
    with cluster:
        urls = cluster.metrics_urls
        assert set(urls) == {"shard-0", "coordinator", "worker-0"}
        recorded = json.loads(cluster.state_file.read_text())["processes"]
        assert {p["name"]: p["metrics"] for p in recorded} == urls
        assert (
            value(scrape(urls["coordinator"]), "pscluster_coordinator_workers", state="alive") == 1
        )

        # Execute: a short job; the coordinator's progress series are read while it runs.
        run = _run_job(cluster, urls, kwargs)
        worker = _worker_once_idle(urls["worker-0"])
        shard = scrape(urls["shard-0"])
        after = scrape(urls["coordinator"])

    # Assert: progress while running; counts that agree once done.
    job_id = run.info.job_id
    assert run.info.state == "completed"
    _assert_coordinator_series(run, after)
    # The shard showed the job while it ran, and forgot its series once it was dropped.
    assert value(run.shard, "pscluster_shard_jobs") == 1
    assert value(run.shard, "pscluster_shard_push_staleness_count", job_id=job_id) > 0
    assert value(shard, "pscluster_shard_jobs") == 0
    assert not [k for k in shard if ("job_id", job_id) in k[1]]
    _assert_worker_agrees(run, worker, samples=3 * len(kwargs["train"][1]))
    _assert_worker_log(tmp_path / "logs" / "worker-0.log", job_id)
    _assert_coordinator_log(tmp_path / "logs" / "coordinator.log")


def _run_job(cluster: LocalCluster, urls: dict[str, str], kwargs: dict[str, Any]) -> Run:
    with cluster.client() as client:
        job = client.submit(**kwargs)
        coordinator: Samples = {}
        shard: Samples = {}

        def progressed() -> bool:
            coordinator.update(scrape(urls["coordinator"]))
            shard.update(scrape(urls["shard-0"]))
            # The worker holds no lease for a moment between two tasks: wait for a scrape
            # that finds it on the job.
            return (
                total(coordinator, "pscluster_coordinator_job_steps_total") > 0
                and total(coordinator, "pscluster_coordinator_job_workers") > 0
                and total(shard, "pscluster_shard_pushes_applied_total") > 0
            )

        what = "the coordinator and shard showing the running job"
        wait_for(progressed, 120, what=what, poll=0.3)
        info = job.wait(timeout=300)
        return Run(info, job.metrics(), coordinator, shard)


def _worker_once_idle(url: str) -> Samples:
    """The worker's series once its task gauge dropped: the worker hands the last lease in
    before it counts it, so the job can be over a moment before its series say so."""
    worker: Samples = {}

    def idle() -> bool:
        worker.clear()
        worker.update(scrape(url))
        return total(worker, "pscluster_worker_task") == 0

    wait_for(idle, 30, what="the worker's task gauge to drop once the job ended", poll=0.3)
    return worker


def _assert_coordinator_series(run: Run, after: Samples) -> None:
    jid = {"job_id": run.info.job_id}
    assert value(run.coordinator, "pscluster_coordinator_job_epochs", **jid) == 3
    assert 0 <= value(run.coordinator, "pscluster_coordinator_job_progress_ratio", **jid) <= 1
    assert value(run.coordinator, "pscluster_coordinator_job_workers", **jid) == 1
    assert value(run.coordinator, "pscluster_coordinator_jobs", state="running") == 1
    assert value(after, "pscluster_coordinator_jobs", state="completed") == 1
    assert total(after, "pscluster_coordinator_job_steps_total") == 0, "only running jobs"


def _assert_worker_agrees(run: Run, worker: Samples, samples: int) -> None:
    """The worker's counts are the job's and the shard's."""
    jid = {"job_id": run.info.job_id}
    final = run.final
    steps = value(worker, "pscluster_worker_steps_total", **jid)
    assert steps == run.info.steps > 0
    assert final.pushes_applied == steps
    pushes = value(worker, "pscluster_worker_push_duration_seconds_count", **jid)
    assert pushes == final.pushes_applied + sum(final.pushes_rejected.values())
    assert value(worker, "pscluster_worker_pushed_bytes_total", **jid) == final.bytes_pushed
    # The coordinator pulls too (the final model), so the shard sent at least what the worker got.
    assert 0 < value(worker, "pscluster_worker_pulled_bytes_total", **jid) <= final.bytes_pulled
    assert value(worker, "pscluster_worker_samples_total", **jid) == samples
    assert (
        value(worker, "pscluster_worker_tasks_total", **jid, kind="eval", result="completed") == 3
    )
    assert value(worker, "pscluster_worker_injected_slowdown") == 1
    assert total(worker, "pscluster_worker_task") == 0, "idle once the job is done"
    # Where its steps' time went: the same seconds the job's timeline holds
    for phase in ("pull", "forward", "backward", "push"):
        counted = value(worker, "pscluster_worker_phase_seconds_total", **jid, phase=phase)
        timed = sum(p.phases.get(phase, 0.0) for p in final.timeline)
        assert counted > 0 and counted == pytest.approx(timed, rel=1e-6), phase


def _records(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines()
    return list(json_lines([line for line in lines if not line.startswith("===")]))


def _assert_worker_log(log: Path, job_id: str) -> None:
    """The worker's lines about the job carry the job's and the worker's ids."""
    records = _records(log)
    assert records and all(r["role"] == "worker" for r in records)
    about_job = [r for r in records if job_id in str(r["message"])]
    assert about_job, "the worker logged nothing about the job"
    registered = [r for r in records if str(r["message"]).startswith("registered as ")]
    assert registered, "no registration line"
    worker_id = str(registered[-1]["message"]).split()[2]
    assert registered[-1].get("worker_id") == worker_id
    for record in about_job:
        assert record.get("job_id") == job_id, record
        assert record.get("worker_id") == worker_id, record


def _assert_coordinator_log(log: Path) -> None:
    """The coordinator's lines written while handling a call about the job (a worker's lease,
    its progress) carry the ids the request named."""
    leased = [r for r in _records(log) if " leased " in str(r["message"])]
    assert leased, "the coordinator logged no lease"
    for record in leased:
        assert record.get("worker_id") == str(record["message"]).split()[1], record
