"""Mode "auto" keeps a trial copy of a job on its shards only while it fits
PSC_AUTO_TRIAL_MAX_MB (pscluster/server/trial.py): a job past it is still auto, and its
verdicts only tighten."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pscluster.server.trial import copy_bytes
from tests.coordinator.conftest import Running, Shards, submit
from tests.support import tiny_job


@pytest.mark.parametrize(
    ("optimizer", "momentum", "expected"),
    [("sgd", 0.0, 400), ("sgd", 0.9, 800), ("adam", 0.0, 1200), ("adamw", 0.0, 1200)],
)
def test_a_copy_holds_the_values_and_each_optimizer_slot(
    optimizer: str, momentum: float, expected: int
) -> None:
    assert copy_bytes(100, optimizer, momentum) == expected


@pytest.mark.parametrize(("cap_mb", "undoable"), [(1024.0, True), (0.0, False)])
def test_an_auto_job_keeps_a_copy_only_within_the_cap(
    shards: Shards, make_coordinator: Callable[..., Running], cap_mb: float, undoable: bool
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses, auto_trial_max_mb=cap_mb)

    # Execute
    info = submit(running.stub, tiny_job(mode="auto"))

    # Assert
    rt = running.handle.coordinator.rt
    with rt.lock:
        assert rt.core.auto[info.job_id].undoable is undoable
