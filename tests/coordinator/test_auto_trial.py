"""Mode "auto"'s trial copy (pscluster/server/trial.py) from the coordinator's side: kept only
while it fits PSC_AUTO_TRIAL_MAX_MB (a job past it is still auto, and its verdicts only
tighten), and never taken again by the switch a move sends to the job's new shards."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pscluster.coordinator.core.actions import SwitchConsistency
from pscluster.model.optimizer import parse_optimizer
from pscluster.server.consistency import TrialStep
from pscluster.server.trial import copy_bytes
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.coordinator.conftest import RPC_TIMEOUT, Running, Shards, submit
from tests.support import tiny_job


@pytest.mark.parametrize(
    ("optimizer", "momentum", "expected"),
    [("sgd", 0.0, 400), ("sgd", 0.9, 800), ("adam", 0.0, 1200), ("AdamW", 0.0, 1200)],
)
def test_a_copy_holds_the_values_and_each_optimizer_slot(
    optimizer: str, momentum: float, expected: int
) -> None:
    config = common_pb2.OptimizerConfig(name=optimizer, lr=0.1, momentum=momentum)
    assert copy_bytes(100, parse_optimizer(config)) == expected


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


def test_the_switch_sent_again_after_a_move_takes_no_copy(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: the copy begun on the first shard only (the store lists only it), as when a
    # switch reached one old shard before its export and the other after
    running = make_coordinator(shards.addresses)
    job_id = submit(running.stub, tiny_job(mode="auto")).job_id
    rt = running.handle.coordinator.rt
    record = rt.store.get_job(job_id)
    assert record is not None and len(record.shards) == 2
    rt.store.update_job(job_id, shards=record.shards[:1])
    revision = int(time.time() * 1e6) + 10**9  # newer than any the controller sends
    rt.consistency.send(SwitchConsistency(job_id, "async", 0, 0, revision, TrialStep.BEGIN))
    rt.store.update_job(job_id, shards=record.shards)

    # Execute: the move's resend reaches the second shard with the same switch
    rt.consistency.resend(job_id)
    again = ps_pb2.SetConsistencyRequest(job_id=job_id, mode="async", revision=revision)
    second = shards.stub(record.shards[1].address)
    in_force = second.SetConsistency(again, timeout=RPC_TIMEOUT).revision
    undo = ps_pb2.SetConsistencyRequest(
        job_id=job_id, mode="sync", revision=revision + 1, trial=ps_pb2.TRIAL_UNDO
    )
    replies = [
        shards.stub(s.address).SetConsistency(undo, timeout=RPC_TIMEOUT) for s in record.shards
    ]

    # Assert: the switch reached it (its revision was in force), the copy did not
    assert in_force == revision
    assert [r.undone for r in replies] == [True, False]
