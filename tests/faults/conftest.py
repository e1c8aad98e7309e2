"""Fault tests run real clusters (processes on loopback); each prints what it measured."""

from __future__ import annotations

import pytest

from tests.faults.scenarios import Outcome


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> object:
    """Print an outcome so that ``pytest -s`` (and the captured output of a failure) shows
    the measurements: detection, recovery, updates lost, final accuracy."""

    def show(outcome: Outcome) -> None:
        with capsys.disabled():
            print("\n" + outcome.line())

    return show
