"""Jobs that cannot run say why instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest

from pscluster.client.errors import InvalidJobError, JobFailed
from pscluster.client.processes import free_ports
from pscluster.client.sdk import Client
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits
from tests.e2e.models import DigitsMLP, FailsOnWorkers, NeedsLocalFile

pytestmark = pytest.mark.slow


def test_a_model_that_does_not_build_from_the_shipped_code_is_refused_at_submit(
    tmp_path: Path,
) -> None:
    # Prepare: the model reads a file beside it, which does not travel with its code.
    train, test = digits()

    # Execute
    with (
        Client(f"127.0.0.1:{free_ports('127.0.0.1', 1)[0]}") as client,
        pytest.raises(InvalidJobError) as refused,
    ):
        client.submit(model=NeedsLocalFile, train=train, test=test, epochs=1)

    # Assert: found by the dry run, before any call (nothing listens at that address).
    assert "NeedsLocalFile does not build from the code that would be sent" in str(refused.value)
    assert "classes.txt" in str(refused.value)


def test_a_model_that_fails_on_the_workers_fails_the_job_with_its_traceback(
    tmp_path: Path,
) -> None:
    # Prepare
    cluster = start_cluster(tmp_path, shards=1, workers=1, PSC_TEST_BROKEN_MACHINE="1")
    train, test = digits()
    try:
        with cluster.client() as client:
            # Execute
            job = client.submit(model=FailsOnWorkers, train=train, test=test, epochs=1)
            with pytest.raises(JobFailed):
                job.wait(timeout=120)
            info = job.info()
    finally:
        cluster.stop()

    # Assert
    assert info.state == "failed"
    assert "Traceback" in info.error and "libcuda.so.1" in info.error


def test_a_job_without_workers_says_so_in_its_status(tmp_path: Path) -> None:
    # Prepare
    cluster = start_cluster(tmp_path, shards=1, workers=0)
    train, test = digits()
    try:
        with cluster.client() as client:
            # Execute
            job = client.submit(model=DigitsMLP, train=train, test=test, epochs=1)
            with pytest.raises(TimeoutError):
                job.wait(timeout=6)
            info = job.info()
    finally:
        cluster.stop()

    # Assert
    assert info.state == "running"
    assert "no worker" in info.status_message.lower()
