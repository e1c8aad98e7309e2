"""The small programs the image carries, run on the host against real servers (no Docker)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from pscluster.client.processes import free_ports
from pscluster.config import Settings
from pscluster.server.main import serve
from pscluster.transport.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "deploy" / "image" / "psc_health.py"
REQUIREMENTS = ROOT / "deploy" / "scripts" / "runtime_requirements.py"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def shard() -> Iterator[RunningServer]:
    running = serve(Settings(host="127.0.0.1"), port=0)
    try:
        yield running
    finally:
        running.stop(0)


def test_the_probe_passes_a_serving_shard(shard: RunningServer) -> None:
    # Execute
    done = probe(f"127.0.0.1:{shard.port}")

    # Assert
    assert done.returncode == 0, done.stderr
    assert "is SERVING" in done.stdout


def test_the_probe_fails_a_shard_that_is_shutting_down(shard: RunningServer) -> None:
    # Prepare: what a server does first on SIGTERM, while it still answers calls
    shard.health.enter_graceful_shutdown()

    # Execute
    done = probe(f"127.0.0.1:{shard.port}", "--quiet")

    # Assert
    assert done.returncode == 1
    assert "NOT_SERVING, expected SERVING" in done.stderr


def test_the_probe_fails_an_unknown_service_and_names_it(shard: RunningServer) -> None:
    # Execute
    done = probe(f"127.0.0.1:{shard.port}", "--service", "no.such.Service")

    # Assert
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr


def test_the_probe_fails_where_nothing_listens_within_its_deadline() -> None:
    # Prepare
    port = free_ports("127.0.0.1", 1)[0]

    # Execute
    done = probe(f"127.0.0.1:{port}", "--timeout", "1")

    # Assert
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr or "DEADLINE_EXCEEDED" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["localhost"], "is not host:port"),
        (["localhost:0"], "port in 1..65535"),
        (["localhost:50051", "--timeout", "0"], "--timeout must be > 0"),
    ],
)
def test_the_probe_rejects_bad_arguments_with_a_message(args: list[str], message: str) -> None:
    # Execute
    done = probe(*args)

    # Assert
    assert done.returncode == 2
    assert message in done.stderr


def test_runtime_requirements_are_the_dependencies_of_pyproject() -> None:
    # Prepare
    with (ROOT / "pyproject.toml").open("rb") as f:
        expected = tomllib.load(f)["project"]["dependencies"]

    # Execute
    done = subprocess.run(
        [sys.executable, str(REQUIREMENTS), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    # Assert
    assert done.stdout.splitlines() == expected


def test_runtime_requirements_say_what_is_wrong_with_a_pyproject(tmp_path: Path) -> None:
    # Prepare
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\n')

    # Execute
    done = subprocess.run(
        [sys.executable, str(REQUIREMENTS), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Assert
    assert done.returncode == 1
    assert "expected a [project] dependencies list" in done.stderr
