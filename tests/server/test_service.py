"""The ParameterServer service over real sockets: round trips, parity with torch.optim, and
the consistency modes across worker threads (bad input: test_service_errors.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
import torch

from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server.conftest import N
from tests.support import rpc_failure

F32 = common_pb2.DTYPE_FLOAT32


def test_init_pull_push_round_trip_in_many_chunks(client: Any, job: torch.Tensor) -> None:
    header, values, chunks = client.pull("j", "w1", chunk_bytes=1000)
    assert chunks == 12 and torch.equal(values, job)
    assert (header.version, header.start, header.length, header.dtype) == (0, 0, N, F32)

    grad = torch.randn(N, generator=torch.Generator().manual_seed(2))
    reply = client.push("j", "w1", grad, seq=1, base_version=header.version)

    assert reply.outcome == ps_pb2.PUSH_OUTCOME_APPLIED and reply.version == 1
    expected = job.clone()
    expected.add_(grad, alpha=-0.1)
    assert torch.equal(client.pull("j", "w1")[1], expected)
    stats = client.stats("j")
    assert (stats.pushes_applied, stats.pulls, stats.bytes_pushed) == (1, 2, 4 * N)
    assert stats.checksum == pytest.approx(float(expected.double().sum()))
    assert stats.shard.startswith("127.0.0.1:")


def test_sgd_through_grpc_is_bit_identical_to_torch_optim(client: Any) -> None:
    gen = torch.Generator().manual_seed(3)
    initial = torch.randn(N, generator=gen)
    config = sgd(lr=0.05, momentum=0.9, weight_decay=1e-4)
    client.init_job("p", initial, optimizer=config)
    client.set_members("p", ["w1"], 1)
    reference = torch.nn.Parameter(initial.clone())
    opt = torch.optim.SGD([reference], lr=0.05, momentum=0.9, weight_decay=1e-4)

    for seq in range(1, 4):
        grad = torch.randn(N, generator=gen)
        reference.grad = grad
        opt.step()
        assert client.push("p", "w1", grad, seq=seq, base_version=seq - 1).version == seq

    assert torch.equal(client.pull("p", "w1")[1], reference.detach())


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"),
    [(common_pb2.DTYPE_FLOAT16, torch.float16), (common_pb2.DTYPE_BFLOAT16, torch.bfloat16)],
)
def test_half_precision_pulls(
    client: Any, job: torch.Tensor, dtype: int, torch_dtype: torch.dtype
) -> None:
    header, values, chunks = client.pull("j", "w1", dtype=dtype, chunk_bytes=1000)
    assert header.dtype == dtype and chunks == 6
    assert torch.equal(values, job.to(torch_dtype).float())
    assert client.stats("j").bytes_pulled == 2 * N


def test_sync_barrier_across_two_worker_threads(client: Any) -> None:
    client.init_job("s", torch.zeros(N), mode="sync", optimizer=sgd(lr=1.0))
    client.set_members("s", ["w1", "w2"], 1)
    results: dict[str, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def worker(name: str, value: float) -> None:
        try:
            reply = client.push("s", name, torch.full((N,), value), seq=1, base_version=0)
            header, values, _ = client.pull("s", name, min_version=1)
            results[name] = (reply.outcome, header.version)
            assert torch.equal(values, torch.full((N,), -2.0))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=a) for a in (("w1", 1.0), ("w2", 3.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert not errors
    outcomes = sorted(outcome for outcome, _ in results.values())
    assert outcomes == [ps_pb2.PUSH_OUTCOME_APPLIED, ps_pb2.PUSH_OUTCOME_BUFFERED]
    assert {version for _, version in results.values()} == {1}
    assert client.stats("s").steps_applied == 1


def test_blocked_pull_answers_deadline_exceeded_naming_the_missing_worker(client: Any) -> None:
    client.init_job("s", torch.zeros(N), mode="sync")
    client.set_members("s", ["w1", "w2"], 1)
    client.push("s", "w1", torch.ones(N), seq=1)

    code, details = rpc_failure(lambda: client.pull("s", "w1", min_version=1, timeout=1.0))

    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "sync barrier for step 0 waiting on workers ['w2']" in details


def test_retried_push_is_applied_once(client: Any, job: torch.Tensor) -> None:
    first = client.push("j", "w1", torch.ones(N), seq=5)
    again = client.push("j", "w1", torch.ones(N), seq=5)
    assert not first.duplicate and again.duplicate and again.version == first.version == 1
    assert client.stats("j").pushes_applied == 1


def test_members_generations_and_drop(client: Any, job: torch.Tensor) -> None:
    assert client.set_members("j", ["w1", "w2"], 3) == 3
    assert client.set_members("j", ["w9"], 2) == 3
    assert list(client.stats("j").members) == ["w1", "w2"]
    code, _ = rpc_failure(lambda: client.set_members("j", ["w1", "w1"], 4))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    client.drop("j")
    assert rpc_failure(lambda: client.stats("j"))[0] == grpc.StatusCode.NOT_FOUND
    client.init_job("j", torch.zeros(4))  # the id is free again
    assert client.stats("j").length == 4


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> common_pb2.OptimizerConfig:
    return common_pb2.OptimizerConfig(
        name="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay
    )


def test_ssp_workers_of_different_speeds_stay_within_the_bound(client: Any) -> None:
    s, steps = 1, 12
    client.init_job("ssp", torch.zeros(N), mode="ssp", staleness=s, optimizer=sgd(lr=0.01))
    workers = {"fast": 0.0, "mid": 0.01, "slow": 0.03}  # seconds of "compute" per step
    client.set_members("ssp", list(workers), 1)
    errors: list[BaseException] = []

    def run(name: str, delay: float) -> None:
        try:
            for seq in range(1, steps + 1):
                header, _, _ = client.pull("ssp", name, timeout=20)
                time.sleep(delay)  # its "compute": the speeds under test
                reply = client.push(
                    "ssp",
                    name,
                    torch.ones(N),
                    seq=seq,
                    base_version=header.version,
                    base_clock=header.clock,
                )
                assert reply.outcome == ps_pb2.PUSH_OUTCOME_APPLIED, reply.reason
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=item) for item in workers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert not errors
    stats = client.stats("ssp")
    assert dict(stats.worker_clocks) == {name: steps for name in workers}
    assert stats.pushes_applied == 3 * steps and stats.version == 3 * steps
    assert stats.max_clock_lead <= s and max(stats.clock_staleness) <= s
    assert stats.max_clock_lead == s  # the fast worker did run ahead, as far as allowed
