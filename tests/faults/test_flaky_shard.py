"""A shard behind a flaky link (latency, dropped connections, lost replies): every push is
applied once, however often it is retried, and the job reaches its target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.scenarios import TARGET_ACCURACY, Outcome, flaky_shard

pytestmark = pytest.mark.slow


def test_retried_pushes_through_a_flaky_link_are_applied_exactly_once(
    tmp_path: Path, report: Callable[[Outcome], None]
) -> None:
    # Execute
    outcome = flaky_shard(tmp_path)
    report(outcome)

    # Assert: faults were injected, and retries happened (the shard behind the proxy saw
    # pushes it had already applied); in async mode each shard's version is the number of
    # pushes it applied, so both equal the steps the workers had acknowledged: none lost,
    # none applied twice.
    details = outcome.details
    assert details["replies_cut"] > 0 and details["proxy_connections"] > 1
    assert outcome.state == "completed", outcome.line()
    assert (outcome.final_accuracy or 0.0) >= TARGET_ACCURACY
    assert details["duplicates"][1] > 0, "no push was retried after a lost reply"
    assert details["versions"] == [details["steps"]] * 2, outcome.line()
    assert outcome.updates_lost == 0
