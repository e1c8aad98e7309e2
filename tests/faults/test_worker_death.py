"""A worker killed mid-job: noticed within the timeout, its lease re-leased, the job done."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.scenarios import HEARTBEAT, TARGET_ACCURACY, Outcome, worker_death

pytestmark = pytest.mark.slow


def test_a_killed_worker_is_declared_dead_and_its_lease_goes_to_another(
    tmp_path: Path, report: Callable[[Outcome], None]
) -> None:
    # Execute
    outcome = worker_death(tmp_path)
    report(outcome)

    # Assert: silent for the timeout (3 heartbeats), noticed by the next liveness check (every
    # half heartbeat), seen by the status poll (0.1 s); the last heartbeat before the kill was
    # up to one heartbeat earlier, so the bound from the kill is 3.5 heartbeats plus the poll.
    assert outcome.detect_seconds is not None
    assert outcome.detect_seconds <= 3.5 * HEARTBEAT + 0.5, outcome.line()
    if str(outcome.details["task_at_kill"]).startswith("train"):
        assert outcome.recover_seconds is not None
    assert outcome.state == "completed"
    assert (outcome.final_accuracy or 0.0) >= TARGET_ACCURACY
