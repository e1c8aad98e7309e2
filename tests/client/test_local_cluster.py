"""The SDK and the CLI against a real local cluster: coordinator and shard processes, sockets.

The module-scoped cluster has no workers, so submitted jobs stay pending or running and the
tests see the coordinator's own answers; training is in test_local_training.py (slow).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.errors import InvalidJobError, JobFailed, JobNotFoundError, PSClusterError
from pscluster.client.local import LocalCluster, StartError, read_state, stop_detached
from pscluster.client.payload import build_payload
from pscluster.client.processes import child_env, is_pscluster_process
from pscluster.client.sdk import Client, Job
from pscluster.model import state
from tests.support import wait_for

runner = CliRunner()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        shards=1, workers=0, state_dir=tmp_path_factory.mktemp("cluster"), start_timeout=90
    ) as c:
        yield c
    assert not any(h.alive() for h in c.handles())


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


def test_status_shows_the_shard_healthy(cluster: LocalCluster, client: Client) -> None:
    status = client.status()

    assert [(s.address, s.healthy) for s in status.shards] == [(cluster.shard_addresses[0], True)]
    assert status.workers == ()


def test_submitted_job_is_listed_measured_and_cancelled(
    client: Client, tiny_job: dict[str, Any]
) -> None:
    # Execute
    job = client.submit(**tiny_job)
    info = job.info()
    listed = {i.job_id: i for i in client.jobs()}
    metrics = job.metrics()
    cancelled = job.cancel()

    # Assert
    assert info.job_id == job.id and info.name == "tiny" and info.mode == "ssp"
    assert info.state in ("pending", "running") and info.epochs == 2
    assert info.num_params == 4 * 6 + 6 + 6 * 3 + 3
    assert info.test_accuracy is None and info.last_loss is None
    assert listed[job.id].state in ("pending", "running")
    assert metrics.job_id == job.id and metrics.steps == [] and metrics.final_accuracy is None
    assert cancelled.state == "cancelled"
    with pytest.raises(JobFailed, match=f"job {job.id} was cancelled") as failed:
        job.wait(timeout=30)
    assert failed.value.info.state == "cancelled"


def test_wait_times_out_on_a_job_without_workers(client: Client, tiny_job: dict[str, Any]) -> None:
    job = client.submit(**tiny_job)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="still running after 1 s"):
            job.wait(timeout=1.0, poll=0.2)
        assert time.monotonic() - start < 10
    finally:
        job.cancel()


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"mode": "bogus"}, "mode"), ({"epochs": 0}, "epochs"), ({"loss": "hinge"}, "loss")],
)
def test_bad_spec_is_refused_by_the_coordinator(
    client: Client, tiny_job: dict[str, Any], changes: dict[str, Any], field: str
) -> None:
    before = len(client.jobs())

    with pytest.raises(InvalidJobError) as info:
        client.submit(**{**tiny_job, **changes})

    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(info.value)
    assert len(client.jobs()) == before  # nothing was stored


def test_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(JobNotFoundError) as info:
        client.job("j-does-not-exist")

    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "j-does-not-exist" in str(info.value)


def test_fetch_gives_the_live_model_then_says_why_not(
    client: Client, tiny_job: dict[str, Any]
) -> None:
    # Prepare: with no workers, the live parameters are the submitted initial state.
    expected = state.loads(build_payload(**tiny_job).initial_state)
    job = client.submit(**tiny_job)
    _wait_for_state(job, "running")

    # Execute
    live = job.fetch_model()
    job.cancel()
    with pytest.raises(PSClusterError) as info:
        job.fetch_model()

    # Assert
    assert live.keys() == expected.keys()
    assert all(torch.equal(live[k], expected[k]) for k in expected)
    tiny_job["model"](**tiny_job["model_kwargs"]).load_state_dict(live)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"job {job.id} is cancelled" in str(info.value)


def _wait_for_state(job: Job, wanted: str, timeout: float = 30.0) -> None:
    wait_for(
        lambda: job.info().state == wanted,
        timeout,
        what=f"job {job.id} to be {wanted}",
        poll=0.1,
        context=lambda: f"it is {job.info().state}",
    )


def test_cli_commands_against_the_cluster(cluster: LocalCluster, job_file: Path) -> None:
    address = ["--address", cluster.address]

    submitted = runner.invoke(app, ["submit", str(job_file), *address])
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.strip()
    assert job_id and " " not in job_id  # just the id, for JOB=$(pscluster submit ...)

    jobs = runner.invoke(app, ["jobs", *address])
    assert jobs.exit_code == 0 and job_id in jobs.output and "tiny" in jobs.output

    status = runner.invoke(app, ["status", *address])
    assert status.exit_code == 0 and cluster.shard_addresses[0] in status.output
    assert "healthy" in status.output

    metrics = runner.invoke(app, ["metrics", job_id, *address])
    assert metrics.exit_code == 0 and "pushes applied: 0" in metrics.output

    out = job_file.parent / "live.safetensors"
    with Client(cluster.address) as c:
        _wait_for_state(c.job(job_id), "running")
    fetch = runner.invoke(app, ["fetch", job_id, "-o", str(out), *address])
    assert fetch.exit_code == 0, fetch.output
    assert set(state.loads(out.read_bytes())) == {
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }

    cancel = runner.invoke(app, ["cancel", job_id, *address])
    assert cancel.exit_code == 0 and f"job {job_id}: cancelled" in cancel.output

    refused = runner.invoke(app, ["fetch", job_id, "-o", str(out), *address])
    assert refused.exit_code == 1 and "cancelled" in refused.output
    assert "Traceback" not in refused.output

    watch = runner.invoke(app, ["watch", job_id, *address])
    assert watch.exit_code == 1 and "was cancelled" in watch.output

    missing = runner.invoke(app, ["watch", "j-nope", *address])
    assert missing.exit_code == 1 and "j-nope" in missing.output


def test_second_cluster_on_the_same_state_dir_is_refused(cluster: LocalCluster) -> None:
    with pytest.raises(StartError, match="already running"):
        LocalCluster(shards=1, workers=0, state_dir=cluster.state_dir).start()
    assert cluster.coordinator is not None and cluster.coordinator.alive()


def test_shard_with_bad_settings_fails_with_its_log(tmp_path: Path) -> None:
    cluster = LocalCluster(
        shards=1, workers=0, state_dir=tmp_path, env={"PSC_MAX_MESSAGE_BYTES": "1"}
    )

    with pytest.raises(StartError) as info:
        cluster.start()

    assert "shard-0 exited with code" in str(info.value)
    assert "max_message_bytes" in str(info.value)
    assert not any(h.alive() for h in cluster.handles())
    assert read_state(tmp_path) is None


def test_taken_coordinator_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = LocalCluster(shards=1, workers=0, state_dir=tmp_path, port=port)

        with pytest.raises(StartError, match="coordinator exited with code"):
            cluster.start()

    assert not any(h.alive() for h in cluster.handles())


def test_detached_cluster_outlives_its_object_until_stopped(tmp_path: Path) -> None:
    cluster = LocalCluster(shards=1, workers=0, state_dir=tmp_path).start()
    handles = cluster.handles()
    cluster.detach()
    cluster.stop()  # a detached cluster is not stopped by its object

    assert all(h.alive() for h in handles)
    state = read_state(tmp_path)
    assert state is not None and state["address"] == cluster.address

    stopped = stop_detached(tmp_path, grace=10.0)

    assert sorted(stopped) == ["coordinator", "shard-0"]
    assert all(h.wait(10.0) for h in handles)
    assert read_state(tmp_path) is None


def test_up_in_the_foreground_stops_everything_on_sigterm(tmp_path: Path) -> None:
    # Prepare: `pscluster up` as the user runs it, in its own process.
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pscluster.client.cli",
            "up",
            "--local",
            "--shards",
            "1",
            "--workers",
            "0",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path),
        ],
        env=child_env(os.environ, {"COLUMNS": "200"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def came_up() -> bool:
        assert up.poll() is None, up.communicate()[0]
        state = read_state(tmp_path)
        return state is not None and len(state["processes"]) >= 2

    try:
        wait_for(came_up, 90, what="the cluster to come up", poll=0.2)
        state = read_state(tmp_path)
        assert state is not None
        with Client(state["address"]) as client:
            assert [s.healthy for s in client.status().shards] == [True]

        # Execute
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)

    # Assert
    assert up.returncode == 0, output
    assert "stopped" in output
    assert read_state(tmp_path) is None
    for p in state["processes"]:
        assert not is_pscluster_process(p["pid"]), f"{p['name']} is still running"


def test_an_in_memory_cluster_trains_without_writing_shard_files(
    tmp_path: Path, tiny_job: dict[str, Any]
) -> None:
    # Prepare: `pscluster up --in-memory`: shards that keep their jobs in memory, as DDP
    # keeps its state (LocalCluster(durable=False))
    sizes = ["--shards", "1", "--workers", "1", "--port", "0", "--state-dir", str(tmp_path)]
    up = runner.invoke(app, ["up", "--local", "--in-memory", *sizes, "--detach"])
    assert up.exit_code == 0, up.output
    state = read_state(tmp_path)
    assert state is not None
    try:
        # Execute
        with Client(state["address"]) as client:
            info = client.submit(**tiny_job).wait(timeout=120)
    finally:
        stop_detached(tmp_path, grace=10.0)

    # Assert: trained, and no log or checkpoint was written (a durable shard's go here)
    assert info.state == "completed"
    assert not (tmp_path / "shards").exists()
