"""Worker registry: ids, liveness and death, driven by an explicit clock."""

from __future__ import annotations

import pytest

from pscluster.coordinator.workers import WorkerRegistry
from pscluster.errors import InvalidArgument, NotFound


def test_a_new_worker_gets_a_fresh_id_and_a_requested_one_is_kept() -> None:
    reg = WorkerRegistry(timeout_seconds=5)
    fresh, replaced = reg.register("h", 1, "cpu", now=0.0)
    assert fresh.worker_id.startswith("w-") and not replaced
    named, replaced = reg.register("h", 2, "cpu", now=0.0, worker_id="gpu-0")
    assert named.worker_id == "gpu-0" and not replaced
    _, replaced = reg.register("h", 3, "cpu", now=1.0, worker_id="gpu-0")
    assert replaced  # the id was alive: a restarted process took it over


@pytest.mark.parametrize("bad", ["../x", "a b", "-lead", "x" * 65])
def test_a_malformed_requested_id_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="worker_id"):
        WorkerRegistry(timeout_seconds=5).register("h", 1, "cpu", now=0.0, worker_id=bad)


def test_a_silent_worker_dies_and_must_register_again() -> None:
    # Prepare
    reg = WorkerRegistry(timeout_seconds=5)
    quiet, _ = reg.register("h", 1, "cpu", now=0.0)
    chatty, _ = reg.register("h", 2, "cpu", now=0.0)
    # Execute
    assert reg.touch(chatty.worker_id, now=4.0)
    dead, forgotten = reg.expire(now=6.0)
    # Assert
    assert dead == [quiet.worker_id] and forgotten == []
    assert not reg.touch(quiet.worker_id, now=6.0)
    with pytest.raises(NotFound, match="register again"):
        reg.require(quiet.worker_id, now=6.0)
    assert reg.alive_count() == 1
    assert {w.worker_id: w.alive for w in reg.snapshot()} == {
        quiet.worker_id: False,
        chatty.worker_id: True,
    }
    # Registering again under the old id revives it.
    reg.register("h", 3, "cpu", now=7.0, worker_id=quiet.worker_id)
    assert reg.require(quiet.worker_id, now=7.0).alive


def test_the_dead_are_forgotten_after_a_while() -> None:
    reg = WorkerRegistry(timeout_seconds=1)
    w, _ = reg.register("h", 1, "cpu", now=0.0)
    assert reg.expire(now=2.0) == ([w.worker_id], [])
    assert reg.expire(now=20.0) == ([], [w.worker_id])
    assert reg.snapshot() == []
