"""Jobs that cannot run say why instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest

from pscluster.client.errors import JobFailed
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits
from tests.e2e.models import DigitsMLP, NeedsLocalFile

pytestmark = pytest.mark.slow


def test_a_model_that_does_not_build_on_workers_fails_the_job_with_its_traceback(
    tmp_path: Path,
) -> None:
    # Prepare
    cluster = start_cluster(tmp_path, shards=1, workers=1)
    train, test = digits()
    try:
        with cluster.client() as client:
            # Execute
            job = client.submit(model=NeedsLocalFile, train=train, test=test, epochs=1)
            with pytest.raises(JobFailed):
                job.wait(timeout=120)
            info = job.info()
    finally:
        cluster.stop()

    # Assert
    assert info.state == "failed"
    assert "Traceback" in info.error and "classes.txt" in info.error


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
