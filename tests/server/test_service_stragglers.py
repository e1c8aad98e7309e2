"""Stragglers and staleness through the ParameterServer service over real sockets: the new
config fields, SetMembers with excluded ids, and the LATE outcome of a push."""

from __future__ import annotations

from typing import Any

import grpc
import torch

from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.support import rpc_failure

N = 1000


def sgd(lr: float) -> common_pb2.OptimizerConfig:
    return common_pb2.OptimizerConfig(name="sgd", lr=lr)


def test_a_push_for_a_closed_backup_step_is_answered_late(client: Any) -> None:
    client.init_job("b", torch.zeros(N), mode="sync", optimizer=sgd(lr=1.0), backup_workers=1)
    client.set_members("b", ["w1", "w2", "w3"], 1)

    first = client.push("b", "w1", torch.full((N,), 1.0), seq=1)
    second = client.push("b", "w2", torch.full((N,), 3.0), seq=1)
    late = client.push("b", "w3", torch.full((N,), 50.0), seq=1, base_version=0)

    assert first.outcome == ps_pb2.PUSH_OUTCOME_BUFFERED
    assert second.outcome == ps_pb2.PUSH_OUTCOME_APPLIED and second.version == 1
    assert late.outcome == ps_pb2.PUSH_OUTCOME_LATE and late.version == 1
    assert "closed without this push" in late.reason
    header, values, _ = client.pull("b", "w3", min_version=1)
    assert header.version == 1 and torch.equal(values, torch.full((N,), -2.0))
    stats = client.stats("b")
    assert dict(stats.pushes_rejected) == {"late": 1} and stats.steps_applied == 1


def test_backup_workers_outside_sync_are_refused_at_init(client: Any) -> None:
    code, details = rpc_failure(lambda: client.init_job("x", torch.zeros(4), backup_workers=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs mode 'sync'" in details
    assert rpc_failure(lambda: client.stats("x"))[0] == grpc.StatusCode.NOT_FOUND


def test_excluding_a_straggler_over_grpc_unblocks_the_others(client: Any) -> None:
    client.init_job("s", torch.zeros(N), mode="ssp", staleness=0)
    client.set_members("s", ["fast", "slow"], 1)
    assert client.push("s", "fast", torch.ones(N), seq=1).clock == 0  # fast at 1, slow at 0
    code, details = rpc_failure(lambda: client.pull("s", "fast", timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "slowest worker slow" in details

    assert client.set_members("s", ["fast", "slow"], 2, excluded=["slow"]) == 2

    header, _, _ = client.pull("s", "fast", timeout=5)
    assert header.clock == 1
    stats = client.stats("s")
    assert list(stats.excluded) == ["slow"] and stats.clock == 1
    stale = client.push("s", "slow", torch.ones(N), seq=1, base_clock=0)
    assert stale.outcome == ps_pb2.PUSH_OUTCOME_STALE


def test_excluding_a_stranger_is_invalid_and_changes_nothing(client: Any) -> None:
    client.init_job("s", torch.zeros(4), mode="ssp", staleness=1)
    client.set_members("s", ["w1", "w2"], 1)

    code, details = rpc_failure(lambda: client.set_members("s", ["w1"], 2, excluded=["w2"]))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "['w2'] are not in worker_ids" in details
    stats = client.stats("s")
    assert list(stats.members) == ["w1", "w2"] and list(stats.excluded) == []
    assert client.set_members("s", ["w1"], 2) == 2  # generation 2 was not used up


def test_staleness_aware_lr_travels_in_the_job_config(client: Any) -> None:
    client.init_job("a", torch.zeros(N), optimizer=sgd(lr=1.0), staleness_aware_lr=True)
    client.set_members("a", ["w1", "w2"], 1)
    client.push("a", "w1", torch.full((N,), 2.0), seq=1, base_version=0)
    client.push("a", "w2", torch.full((N,), 2.0), seq=1, base_version=0)  # staleness 1: halved
    assert torch.equal(client.pull("a", "w1")[1], torch.full((N,), -3.0))
