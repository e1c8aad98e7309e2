"""Local steps switched on and off while a job runs (mode "auto"), through a real shard: a
push says whether it carries a gradient or the change of local steps, and the shard applies
each as what it is, whatever the number in force when it arrives."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import torch

from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server.test_live_switch import switch

N = 16
ADAM = common_pb2.OptimizerConfig(name="adam", lr=0.1)


def reference_adam() -> tuple[torch.nn.Parameter, torch.optim.Adam]:
    param = torch.nn.Parameter(torch.zeros(N))
    return param, torch.optim.Adam([param], lr=0.1)


def adam_step(param: torch.nn.Parameter, opt: torch.optim.Adam, grad: torch.Tensor) -> None:
    param.grad = grad.clone()
    opt.step()


def test_pulls_say_the_local_steps_in_force_and_the_revision(client: Any) -> None:
    client.init_job("p", torch.zeros(N), optimizer=ADAM)
    client.set_members("p", ["w1"], 1)

    before, _, _ = client.pull("p", "w1")
    switch(client, "p", "async", revision=7, local_steps=4)
    during, _, _ = client.pull("p", "w1")
    switch(client, "p", "sync", revision=8)
    after, _, _ = client.pull("p", "w1")

    assert (before.revision, before.local_steps) == (0, 0)
    assert (during.revision, during.local_steps) == (7, 4)
    assert (after.revision, after.local_steps) == (8, 0)


def test_a_change_is_added_at_lr_and_the_optimizer_state_waits(client: Any) -> None:
    # Prepare: Adam, one gradient step; then local steps (4 per push)
    client.init_job("a", torch.zeros(N), optimizer=ADAM)
    client.set_members("a", ["w1"], 1)
    grad, change = torch.ones(N), torch.full((N,), 2.0)
    param, opt = reference_adam()

    # Execute: a gradient, a change (of 4 local steps), a gradient again after local steps end
    client.push("a", "w1", grad, seq=1)
    switch(client, "a", "async", revision=2, local_steps=4)
    added = client.push("a", "w1", change, seq=2, base_version=1, local_steps=4)
    switch(client, "a", "async", revision=3)
    client.push("a", "w1", grad, seq=3, base_version=2)
    _, values, _ = client.pull("a", "w1")

    # Assert: Adam's second step has the state of its first only; the change moved the values
    # by lr times itself in between
    adam_step(param, opt, grad)
    with torch.no_grad():
        param.sub_(0.1 * change)
    adam_step(param, opt, grad)
    assert added.outcome == ps_pb2.PUSH_OUTCOME_APPLIED and added.version == 2
    torch.testing.assert_close(values, param.detach(), rtol=0, atol=1e-7)


def test_a_sync_step_holding_both_kinds_applies_each_once(client: Any) -> None:
    # Prepare: sync, two members; w1 pushed a gradient before local steps began
    client.init_job("s", torch.zeros(N), mode="sync", optimizer=ADAM)
    client.set_members("s", ["w1", "w2"], 1)
    grad, change = torch.full((N,), 3.0), torch.full((N,), 4.0)
    held = client.push("s", "w1", grad, seq=1)

    # Execute: local steps begin; w2's push for the same step is a change
    switch(client, "s", "sync", revision=2, local_steps=2)
    closing = client.push("s", "w2", change, seq=1, local_steps=2)
    header, values, _ = client.pull("s", "w1", min_version=1)

    # Assert: one step: Adam on the gradient's half of the average, then the change's half
    param, opt = reference_adam()
    adam_step(param, opt, grad / 2)
    with torch.no_grad():
        param.sub_(0.1 * change / 2)
    assert held.outcome == ps_pb2.PUSH_OUTCOME_BUFFERED
    assert closing.outcome == ps_pb2.PUSH_OUTCOME_APPLIED
    assert header.version == 1 and header.local_steps == 2
    torch.testing.assert_close(values, param.detach(), rtol=0, atol=1e-7)


def test_local_steps_out_of_range_are_refused_and_change_nothing(client: Any) -> None:
    client.init_job("r", torch.zeros(N), optimizer=ADAM)

    with pytest.raises(grpc.RpcError) as refused:
        switch(client, "r", "async", revision=2, local_steps=5000)
    header, _, _ = client.pull("r")

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "local_steps=5000 is out of range" in str(refused.value.details())
    assert (header.revision, header.local_steps) == (0, 0)


def test_undo_keep_goes_back_and_keeps_the_copy_for_the_next_undo(client: Any) -> None:
    # Prepare: a copy taken at zeros, then two pushes under trial
    client.init_job("k", torch.zeros(N), optimizer=ADAM)
    client.set_members("k", ["w1"], 1)
    switch(client, "k", "async", revision=2, local_steps=4, trial=ps_pb2.TRIAL_BEGIN)
    client.push("k", "w1", torch.ones(N), seq=1, local_steps=4)

    # Execute: back, keeping the copy (sync with local steps); a push; back again, for good
    kept = switch(client, "k", "sync", revision=3, local_steps=4, trial=ps_pb2.TRIAL_UNDO_KEEP)
    _, after_keep, _ = client.pull("k", "w1")
    client.push("k", "w1", torch.ones(N), seq=2, base_version=kept.version, local_steps=4)
    final = switch(client, "k", "sync", revision=4, trial=ps_pb2.TRIAL_UNDO)
    _, after_undo, _ = client.pull("k", "w1")
    again = switch(client, "k", "sync", revision=5, trial=ps_pb2.TRIAL_UNDO)

    # Assert
    assert kept.undone and final.undone and not again.undone
    assert torch.equal(after_keep, torch.zeros(N)) and torch.equal(after_undo, torch.zeros(N))
