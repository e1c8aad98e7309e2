"""The CLI where it needs no cluster: readable one-line errors, exit codes, `down`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from pscluster.client import local, processes
from pscluster.client.cli import app
from pscluster.client.processes import ProcessHandle

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in (
        "up",
        "down",
        "submit",
        "watch",
        "jobs",
        "status",
        "metrics",
        "fetch",
        "predict",
        "cancel",
        "plot",
        "certs",
        "coordinator",
        "shard",
        "worker",
    ):
        assert command in result.output


def test_up_without_local_points_at_compose() -> None:
    result = runner.invoke(app, ["up"])

    assert result.exit_code == 1
    assert "docker compose up" in result.output
    assert "Traceback" not in result.output


def test_down_with_nothing_running(tmp_path: Path) -> None:
    result = runner.invoke(app, ["down", "--state-dir", str(tmp_path)])

    assert result.exit_code == 0
    assert "no local cluster is running" in result.output


def test_down_stops_a_recorded_cluster(tmp_path: Path) -> None:
    # Prepare
    h = ProcessHandle(
        role="shard",
        index=0,
        argv=["-c", "import time  # pscluster shard stand-in\ntime.sleep(60)"],
        env=processes.child_env({}, {}),
        log_path=tmp_path / "shard.log",
    )
    h.start()
    record = {"processes": [{"name": "shard-0", "role": "shard", "pid": h.pid}]}
    (tmp_path / local.STATE_FILE).write_text(json.dumps(record))

    # Execute
    result = runner.invoke(app, ["down", "--state-dir", str(tmp_path)])

    # Assert
    assert result.exit_code == 0, result.output
    assert "stopped shard-0" in result.output
    assert h.wait(5.0)
    h.close_log()


def test_submit_of_a_bad_file_names_the_field(write_job: Callable[..., Path]) -> None:
    path = write_job(epochs="many")

    result = runner.invoke(app, ["submit", str(path), "--address", "127.0.0.1:1"])

    assert result.exit_code == 1
    assert "epochs: Input should be a valid integer" in result.output
    assert "Traceback" not in result.output


def test_submit_of_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["submit", str(tmp_path / "nope.yaml")])

    assert result.exit_code == 1
    assert "cannot read job file" in result.output


def test_jobs_without_a_coordinator_is_one_readable_line(dead_address: str) -> None:
    result = runner.invoke(
        app, ["jobs", "--address", dead_address], env={"PSC_RPC_TIMEOUT_SECONDS": "5"}
    )

    assert result.exit_code == 1
    assert result.output.startswith("error: cannot reach the coordinator at " + dead_address)
    assert "pscluster up --local" in result.output
    assert "Traceback" not in result.output
