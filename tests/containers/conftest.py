"""The compose cluster of compose.yaml, built and started once per test session.

The container tests need a Docker engine and compose v2 (`make test` installs both through
deploy/scripts/docker-setup.sh). Without them the tests skip, saying why, except in CI
(CI set): there a missing engine is a failure, not a silently untested feature.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pscluster.client.processes import free_ports
from pscluster.client.sdk import Client, Job
from pscluster.client.spec_file import load_job_file
from tests.containers.compose import ComposeProject, require_docker

ROOT = Path(__file__).resolve().parents[2]
DIGITS_YAML = ROOT / "examples" / "digits.yaml"
WORKERS = 3
# Short liveness, as in the e2e tests: a killed worker's leases go back within seconds.
FAST = {
    "PSC_HEARTBEAT_SECONDS": "0.5",
    "PSC_WORKER_TIMEOUT_SECONDS": "3",
    "PSC_STALL_SECONDS": "3",
    "PSC_PULL_WAIT_SECONDS": "5",
}
JOB_TIMEOUT = 420.0


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host folder compose mounts read-only at /data in every worker (PSC_DATA_DIR)."""
    folder = tmp_path_factory.mktemp("data")
    folder.chmod(0o755)  # the workers run as another user than these tests
    return folder


@pytest.fixture(scope="session")
def compose(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[ComposeProject]:
    """A running cluster (coordinator, ps-0, ps-1, 3 workers) on a free 127.0.0.1 port.

    Always `down -v` at the end, also when a test or the start failed, so that nothing of the
    session is left running; the logs are printed when something failed.
    """
    require_docker()
    project = ComposeProject(
        name=f"psc-test-{secrets.token_hex(4)}",
        publish_port=free_ports("127.0.0.1", 1)[0],
        settings={**FAST, "PSC_DATA_DIR": str(data_dir)},
    )
    failed_before = request.session.testsfailed
    started = False
    try:
        project.build()
        project.up(workers=WORKERS)
        started = True
        yield project
    finally:
        if not started or request.session.testsfailed > failed_before:
            report(request.config, f"last logs of compose project {project.name}", project.logs())
        project.down(volumes=True)


def report(config: pytest.Config, title: str, text: str) -> None:
    """Show ``text`` in the terminal even though output is captured (fixture teardown)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        print(f"--- {title} ---\n{text}")
        return
    terminal.write_sep("-", title)
    terminal.write_line(text)


@pytest.fixture(scope="session")
def digits_job() -> dict[str, Any]:
    """Client.submit keyword arguments of examples/digits.yaml (model and data loaded)."""
    return load_job_file(DIGITS_YAML).submit_kwargs()


@pytest.fixture(scope="session")
def target_accuracy() -> float:
    target = load_job_file(DIGITS_YAML).spec.target_accuracy
    return 0.95 if target is None else target


@pytest.fixture
def client(compose: ComposeProject) -> Iterator[Client]:
    """An SDK client on the host, through the coordinator's published port."""
    with Client(compose.address) as c:
        yield c


@pytest.fixture(scope="session")
def finished_job(compose: ComposeProject, digits_job: dict[str, Any]) -> str:
    """The id of a digits job the cluster ran to completion (shared by the tests that read it)."""
    with Client(compose.address) as c:
        job: Job = c.submit(**digits_job)
        job.wait(timeout=JOB_TIMEOUT)
        return job.id
