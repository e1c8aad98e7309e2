"""The coordinator killed mid-job and restarted: its database brings the job and the leases
back, workers reconnect with backoff and keep their work, a watching client keeps going."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.scenarios import TARGET_ACCURACY, Outcome, coordinator_restart

pytestmark = pytest.mark.slow


def test_a_job_survives_a_coordinator_crash_and_restart(
    tmp_path: Path, report: Callable[[Outcome], None]
) -> None:
    # Execute
    outcome = coordinator_restart(tmp_path, outage=6.0)
    report(outcome)

    # Assert
    details = outcome.details
    assert outcome.state == "completed", outcome.line()
    assert (outcome.final_accuracy or 0.0) >= TARGET_ACCURACY
    assert details["steps_after_restart"] >= details["steps_before_kill"]
    assert outcome.updates_lost == 0
    assert details["leases_restored"] >= 1, "no lease granted before the crash was honoured"
    assert details["watcher"] == "followed to the end"
