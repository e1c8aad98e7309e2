"""A job's consistency switched while it runs (mode "auto"), through a real shard's
SetConsistency: nothing taken is lost or applied twice, and clocks and versions go on."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

TAKEN = (ps_pb2.PUSH_OUTCOME_APPLIED, ps_pb2.PUSH_OUTCOME_BUFFERED)
N = 64


def sgd(lr: float) -> common_pb2.OptimizerConfig:
    return common_pb2.OptimizerConfig(name="sgd", lr=lr)


def switch(
    client: Any,
    job_id: str,
    mode: str,
    revision: int,
    staleness: int = 0,
    backup: int = 0,
    trial: ps_pb2.Trial.ValueType = ps_pb2.TRIAL_UNSPECIFIED,
    local_steps: int = 0,
) -> ps_pb2.SetConsistencyReply:
    request = ps_pb2.SetConsistencyRequest(
        job_id=job_id,
        mode=mode,
        staleness=staleness,
        backup_workers=backup,
        revision=revision,
        trial=trial,
        local_steps=local_steps,
    )
    reply: ps_pb2.SetConsistencyReply = client.stub.SetConsistency(request, timeout=10)
    return reply


def test_a_sync_step_in_progress_is_applied_once_when_the_job_leaves_sync(client: Any) -> None:
    # Prepare: two of three members pushed for step 0 (held, answered BUFFERED)
    client.init_job("s", torch.zeros(N), mode="sync", optimizer=sgd(lr=1.0))
    client.set_members("s", ["w1", "w2", "w3"], 1)
    held = [
        client.push("s", "w1", torch.full((N,), 3.0), seq=1).outcome,
        client.push("s", "w2", torch.full((N,), 6.0), seq=1).outcome,
    ]

    # Execute: to ssp, then w3's push for step 0 (repeated, as a retry), then an old revision
    to_ssp = switch(client, "s", "ssp", revision=5, staleness=1)
    header, after_switch, _ = client.pull("s", "w1", min_version=1, timeout=5)
    late = client.push("s", "w3", torch.full((N,), 1.0), seq=1, base_version=0)
    again = client.push("s", "w3", torch.full((N,), 1.0), seq=1, base_version=0)
    older = switch(client, "s", "sync", revision=4)
    stats = client.stats("s")

    # Assert
    assert held == [ps_pb2.PUSH_OUTCOME_BUFFERED] * 2
    # The held step closed with the average of its two pushes, once, and released w1's pull.
    assert (to_ssp.revision, to_ssp.version) == (5, 1)
    assert header.version == 1 and torch.equal(after_switch, torch.full((N,), -4.5))
    # Under ssp w3's gradient of step 0 is applied on arrival; its retry is not applied again.
    assert late.outcome == ps_pb2.PUSH_OUTCOME_APPLIED and late.version == 2
    assert again.duplicate and again.version == 2
    # An older revision changes nothing.
    assert (older.revision, older.version) == (5, 2)
    assert stats.pushes_applied == 3 and stats.version == 2
    assert stats.worker_clocks == {"w1": 1, "w2": 1, "w3": 1}


def test_an_open_step_carries_over_to_sync_with_backup_workers(client: Any) -> None:
    # Prepare: one of three members pushed for step 0
    client.init_job("b", torch.zeros(N), mode="sync", optimizer=sgd(lr=1.0))
    client.set_members("b", ["w1", "w2", "w3"], 1)
    client.push("b", "w1", torch.full((N,), 2.0), seq=1)

    # Execute: one backup worker, so two pushes close a step: w1's is still in it
    reply = switch(client, "b", "sync", revision=1, backup=1)
    second = client.push("b", "w2", torch.full((N,), 4.0), seq=1)
    third = client.push("b", "w3", torch.full((N,), 9.0), seq=1)
    _, values, _ = client.pull("b", "w1", min_version=1, timeout=5)

    # Assert
    assert reply.version == 0  # nothing was applied by the switch itself
    assert second.outcome == ps_pb2.PUSH_OUTCOME_APPLIED and second.version == 1
    assert third.outcome == ps_pb2.PUSH_OUTCOME_LATE
    assert torch.equal(values, torch.full((N,), -3.0))  # the average of w1's and w2's


def test_switching_while_three_workers_push_loses_and_repeats_nothing(client: Any) -> None:
    # Prepare: every gradient is ones and lr 1, so every optimizer step moves each value by
    # exactly -1, however many pushes it averages: the values are minus the version, always.
    client.init_job("c", torch.zeros(N), mode="sync", optimizer=sgd(lr=1.0))
    workers = ["w1", "w2", "w3"]
    client.set_members("c", workers, 1)
    taken = {w: 0 for w in workers}
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(name: str) -> None:
        try:
            seq, need = 0, 0
            while not stop.is_set():
                header, _, _ = client.pull("c", name, min_version=need, timeout=10)
                seq += 1
                reply = client.push(
                    "c",
                    name,
                    torch.ones(N),
                    seq=seq,
                    base_version=header.version,
                    base_clock=header.clock,
                )
                taken[name] += reply.outcome in TAKEN
                need = reply.next_version
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)

    settings = [("ssp", 1, 0), ("sync", 0, 1), ("sync", 0, 0), ("ssp", 3, 0), ("async", 0, 0)]
    threads = [threading.Thread(target=work, args=(w,)) for w in workers]

    # Execute: switch every 50 ms, then end in async, which holds nothing back
    for t in threads:
        t.start()
    for revision in range(1, 16):
        time.sleep(0.05)
        mode, staleness, backup = settings[revision % len(settings)]
        switch(client, "c", mode, revision, staleness, backup)
    stop.set()
    switch(client, "c", "async", revision=100)
    for t in threads:
        t.join(20)
    stats = client.stats("c")
    _, values, _ = client.pull("c")

    # Assert
    assert not errors, errors
    assert sum(taken.values()) > 30, taken
    # Every push answered as taken was applied exactly once, and nothing else was.
    assert stats.pushes_applied == sum(taken.values()), (stats.pushes_applied, taken)
    assert torch.equal(values, torch.full((N,), -float(stats.version)))


def test_a_trial_undone_brings_back_values_and_momentum_at_a_new_version(client: Any) -> None:
    # Prepare: two sync steps build a momentum buffer; the switch to async copies the state
    momentum = common_pb2.OptimizerConfig(name="sgd", lr=0.5, momentum=0.9)
    client.init_job("t", torch.ones(N), mode="sync", optimizer=momentum)
    client.set_members("t", ["w1"], 1)
    for seq in (1, 2):
        client.push("t", "w1", torch.full((N,), 1.0), seq=seq, base_version=seq - 1)
    _, at_trial, _ = client.pull("t", "w1", min_version=2, timeout=5)
    begun = switch(client, "t", "async", revision=1, trial=ps_pb2.TRIAL_BEGIN)
    for seq in (3, 4, 5):  # the trial: three async updates, the momentum grows
        client.push("t", "w1", torch.full((N,), -8.0), seq=seq, base_version=seq - 1)

    # Execute: the verdict: back to sync, and to the copy
    undone = switch(client, "t", "sync", revision=2, trial=ps_pb2.TRIAL_UNDO)
    header, values, _ = client.pull("t", "w1", min_version=undone.version, timeout=5)
    again = switch(client, "t", "sync", revision=3, trial=ps_pb2.TRIAL_UNDO)
    client.push("t", "w1", torch.full((N,), 1.0), seq=6, base_version=header.version)
    _, after, _ = client.pull("t", "w1", min_version=header.version + 1, timeout=5)

    # Assert: the copy's values at version 6 (5 + the undo); the copy is gone after one undo
    assert begun.version == 2 and undone.undone and undone.version == 6
    assert header.version == 6 and torch.equal(values, at_trial)
    assert not again.undone and again.version == 6
    # The next step goes on from the copy's momentum (0.9 * 1.9 + 1 = 2.71), not the trial's.
    assert torch.allclose(after, at_trial - 0.5 * 2.71)


def test_a_trial_begun_again_in_the_same_mode_moves_the_copy_up(client: Any) -> None:
    # Prepare: async with a copy at version 0, two updates, then the copy taken again
    client.init_job("m", torch.zeros(N), mode="sync", optimizer=sgd(1.0))
    client.set_members("m", ["w1"], 1)
    switch(client, "m", "async", revision=1, trial=ps_pb2.TRIAL_BEGIN)
    for seq in (1, 2):
        client.push("m", "w1", torch.full((N,), -1.0), seq=seq, base_version=seq - 1)
    again = switch(client, "m", "async", revision=2, trial=ps_pb2.TRIAL_BEGIN)
    client.push("m", "w1", torch.full((N,), 5.0), seq=3, base_version=2)

    # Execute
    undone = switch(client, "m", "sync", revision=3, trial=ps_pb2.TRIAL_UNDO)
    _, values, _ = client.pull("m", "w1", min_version=undone.version, timeout=5)

    # Assert: back to the second copy (2.0 everywhere), not to the first (zeros)
    assert again.version == 2 and undone.undone and undone.version == 4
    assert torch.equal(values, torch.full((N,), 2.0))
