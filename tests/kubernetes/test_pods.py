"""The pods of deploy/kubernetes/base, run on Docker from the manifests alone (pods.py), train
digits to the target: the image, the settings, the names the pods find each other by, the
security context (non-root uid, read-only root) and the volumes all work together."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from pscluster.client.processes import free_ports
from pscluster.client.sdk import Client
from pscluster.client.spec_file import load_job_file
from tests.containers.compose import ComposeProject, require_docker
from tests.containers.conftest import DIGITS_YAML, JOB_TIMEOUT, report
from tests.kubernetes.manifests import KUBERNETES, containers, find, render
from tests.kubernetes.pods import PodRunner
from tests.support import UNREACHABLE, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow]


@pytest.fixture(scope="module")
def pods(request: pytest.FixtureRequest) -> Iterator[tuple[PodRunner, str]]:
    """The base manifests' pods, running, with the coordinator Service forwarded to the host."""
    require_docker()
    docs = render(KUBERNETES / "base")
    images = {c["image"] for d in docs for c in containers(d)}
    assert images == {"pscluster:latest"}, "the manifests name the image compose builds"
    # The image as compose.yaml builds it (offline here, through .env): cached after the first.
    ComposeProject(name=f"psc-k8s-build-{secrets.token_hex(4)}", publish_port=0).build()
    runner = PodRunner(docs)
    port = free_ports("127.0.0.1", 1)[0]
    failed_before = request.session.testsfailed
    started = False
    try:
        runner.start({"coordinator": port})
        started = True
        yield runner, f"127.0.0.1:{port}"
    finally:
        if not started or request.session.testsfailed > failed_before:
            report(request.config, f"last logs of pods {runner.prefix}", runner.all_logs())
        runner.close()


@pytest.fixture(scope="module")
def finished(pods: tuple[PodRunner, str]) -> dict[str, Any]:
    """A digits job run to completion on the pods: its info and metrics, and the cluster."""
    _, address = pods
    with Client(address) as client:
        # The shards register once they serve: the job goes to both once both are live.
        wait_for(
            lambda: sum(s.live for s in client.status().registry) == 2,
            60,
            what="both shards registered and live",
            tolerate=UNREACHABLE,
        )
        job = client.submit(**load_job_file(DIGITS_YAML).submit_kwargs())
        info = job.wait(timeout=JOB_TIMEOUT)
        return {"info": info, "metrics": job.metrics(), "status": client.status()}


def test_the_pods_train_digits_to_the_target(finished: dict[str, Any]) -> None:
    target = load_job_file(DIGITS_YAML).spec.target_accuracy or 0.95
    assert finished["info"].state == "completed"
    assert finished["metrics"].final_accuracy >= target, finished["metrics"].epochs
    # Both shards by the addresses they registered; workers by their pod names.
    status = finished["status"]
    assert sorted(s.address for s in status.shards) == ["ps-0.ps:50061", "ps-1.ps:50061"]
    assert all(s.healthy for s in status.shards)
    assert {w.worker_id for w in status.workers if w.alive} == {"worker-0", "worker-1"}
    pushes = finished["metrics"].pushes_by_worker
    assert {w for w, n in pushes.items() if n > 0} <= {"worker-0", "worker-1"}


def test_state_is_on_the_claims_and_logs_and_metrics_are_where_the_manifests_say(
    pods: tuple[PodRunner, str], finished: dict[str, Any]
) -> None:
    runner, _ = pods
    # The shards' write-ahead logs and the coordinator's database are on their volumes.
    for shard in ("ps-0", "ps-1"):
        runner.exec(shard, "test", "-d", "/var/lib/pscluster/shard")
    runner.exec("coordinator-0", "test", "-s", "/var/lib/pscluster/coordinator.sqlite")
    # Every pod serves its metrics on the ConfigMap's port.
    scrape = (
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:9100/metrics', timeout=10).read().decode())"
    )
    for pod, series in (
        ("ps-0", "pscluster_shard_"),
        ("coordinator-0", "pscluster_coordinator_"),
        ("worker-0", "pscluster_worker_"),
    ):
        assert series in runner.exec(pod, "python3", "-c", scrape), pod
    # Logs are JSON lines (the ConfigMap's PSC_LOG_FORMAT) that carry the pod's worker id.
    records = [json.loads(line) for line in runner.logs("worker-0", 400).splitlines() if line]
    assert any(r.get("worker_id") == "worker-0" for r in records)
    assert find(render(KUBERNETES / "base"), "ConfigMap", "pscluster-settings")
