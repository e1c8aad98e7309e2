"""Drive the repository's compose.yaml from tests: one compose project per test session.

Every call runs the docker CLI with a deadline and the same project name, files and environment,
so that a later `up --scale` sees the same configuration and adds containers instead of
recreating the running ones.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# compose also reads ROOT/.env, where deploy/scripts/docker-setup.sh selects the offline build.
COMPOSE_FILE = ROOT / "compose.yaml"


class DockerError(RuntimeError):
    """A docker command failed or ran past its deadline; the message carries its output."""


def run_docker(args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run ``docker *args`` and return its stdout; DockerError with the output otherwise."""
    try:
        done = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise DockerError(f"`docker {' '.join(args)}` ran past {timeout:.0f} s") from e
    except FileNotFoundError as e:
        raise DockerError("the docker CLI is not installed") from e
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise DockerError(f"`docker {' '.join(args)}` exited {done.returncode}:\n{tail}")
    return done.stdout


def require_docker() -> None:
    """Skip the calling test (fixture) when docker compose is unusable here, saying why;
    fail instead in CI (CI set), where a missing engine is an untested feature, not a skip."""
    problem = docker_problem()
    if problem is None:
        return
    reason = f"docker compose is not usable here ({problem}); run `make docker-setup`"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the container tests must run: {reason}")
    pytest.skip(reason)


def docker_problem() -> str | None:
    """Why docker and compose v2 cannot be used here, or None when they can."""
    try:
        run_docker(["info", "--format", "{{.ServerVersion}}"], timeout=30)
        run_docker(["compose", "version", "--short"], timeout=30)
    except DockerError as e:
        return str(e).splitlines()[0]
    return None


@dataclass
class ComposeProject:
    """The cluster of compose.yaml under its own project name, reachable on ``publish_port``.

    ``settings`` are PSC_* variables handed to every container through compose.yaml's
    pass-through list; PSC_* variables of the calling shell are dropped so a developer's
    local-mode settings cannot leak in.
    """

    name: str
    publish_port: int
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.publish_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PSC_")}
        env.update(self.settings)
        env["PSC_PUBLISH_PORT"] = str(self.publish_port)
        return env

    def compose(self, *args: str, timeout: float) -> str:
        command = ["compose", "-p", self.name, "-f", str(COMPOSE_FILE), *args]
        return run_docker(command, timeout, self.env())

    def build(self, timeout: float = 1200) -> None:
        self.compose("build", timeout=timeout)

    def up(self, workers: int, shards: int = 2, timeout: float = 180) -> None:
        """Start (or scale) the cluster and wait until every server is healthy.

        ``--no-recreate`` keeps running containers as they are: scaling must add workers (or
        shards) to a running job, not restart the cluster under it.
        """
        if workers < 0 or shards < 1:
            raise ValueError(f"need workers >= 0 and shards >= 1, got {workers} and {shards}")
        self.compose(
            "up",
            "-d",
            "--no-build",
            "--no-recreate",
            "--wait",
            "--wait-timeout",
            str(int(timeout)),
            "--scale",
            f"worker={workers}",
            "--scale",
            f"ps={shards}",
            timeout=timeout + 30,
        )

    def down(self, volumes: bool, timeout: float = 120) -> None:
        self.compose("down", *(["-v"] if volumes else []), "--timeout", "10", timeout=timeout)

    def containers(self, service: str) -> list[str]:
        """Ids of the running containers of ``service``."""
        out = self.compose("ps", "-q", "--status", "running", service, timeout=60)
        return out.split()

    def inspect(self, container: str) -> dict[str, Any]:
        data = json.loads(run_docker(["inspect", container], timeout=60))
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            raise DockerError(f"docker inspect {container} returned {data!r}")
        return data[0]

    def exec_python(self, service: str, code: str, timeout: float = 60) -> str:
        """Run ``python3 -c code`` in the first container of ``service``; its stdout."""
        return self.compose("exec", "-T", service, "python3", "-c", code, timeout=timeout)

    def logs(self, tail: int = 40) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", str(tail), timeout=60)
        except DockerError as e:
            return str(e)

    def volumes(self) -> list[str]:
        out = run_docker(
            ["volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.name}"],
            timeout=60,
        )
        return out.split()
