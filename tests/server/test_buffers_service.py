"""Buffers and loss scaling over real sockets: InitJob sets a job's buffers, pushes change them,
pulls return them with the values of the same version, and bad input is INVALID_ARGUMENT."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
import torch

from pscluster.server.job_buffers import decode_buffers
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server.conftest import ShardClient, sgd
from tests.support import rpc_failure

N = 3000  # several chunks at the test client's 4 KiB
B = 6  # buffers: five statistics, then a counter
INITIAL = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0, 10.0], dtype=torch.float64)
COUNTERS = [(5, 1)]


def pulled_buffers(header: ps_pb2.PullHeader) -> torch.Tensor:
    return decode_buffers(header.buffers, B, "pulled buffers")


def test_sync_over_grpc_averages_statistics_and_sums_counters(client: ShardClient) -> None:
    # Prepare
    client.init_job("s", torch.zeros(N), mode="sync", buffers=INITIAL, counters=COUNTERS)
    client.set_members("s", ["w1", "w2"], 1)
    d1 = torch.tensor([1.0, 1.0, 0.0, -2.0, 0.5, 1.0], dtype=torch.float64)
    d2 = torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5, 1.0], dtype=torch.float64)

    # Execute
    r1 = client.push("s", "w1", torch.ones(N), seq=1, buffer_delta=d1)
    r2 = client.push("s", "w2", torch.ones(N), seq=1, buffer_delta=d2)
    header, values, _ = client.pull("s", "w1", min_version=1)

    # Assert
    assert (r1.outcome, r2.outcome) == (ps_pb2.PUSH_OUTCOME_BUFFERED, ps_pb2.PUSH_OUTCOME_APPLIED)
    assert pulled_buffers(header).tolist() == [2.5, -1.0, 2.0, 0.0, 3.5, 12.0]
    assert torch.equal(values, torch.full((N,), -0.1))


def test_a_pull_returns_the_buffers_of_the_same_version_as_the_values(
    client: ShardClient,
) -> None:
    # Prepare: every push moves the values by +1 (sgd lr 1, gradient -1) and the buffers by +1,
    # so a pull's values, buffers and version must all tell the same number
    client.init_job("a", torch.zeros(N), optimizer=sgd(lr=1.0), buffers=torch.zeros(B))
    client.set_members("a", ["w1"], 1)
    pushes = 40
    seen: list[tuple[int, float, float]] = []
    done = threading.Event()

    def observe() -> None:
        while not done.is_set():
            header, values, _ = client.pull("a")
            seen.append((header.version, float(values[-1]), float(pulled_buffers(header)[0])))

    observer = threading.Thread(target=observe)
    observer.start()

    # Execute
    for seq in range(1, pushes + 1):
        client.push("a", "w1", -torch.ones(N), seq=seq, buffer_delta=torch.ones(B))
    done.set()
    observer.join()

    # Assert
    assert seen and all(version == value == buffer for version, value, buffer in seen)
    header, _, _ = client.pull("a", "w1")
    assert pulled_buffers(header).tolist() == [float(pushes)] * B


def test_a_job_without_buffers_pulls_empty_buffers(client: ShardClient) -> None:
    client.init_job("none", torch.zeros(N))
    header, _, _ = client.pull("none")
    assert header.buffers == b""


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(buffer_length=B), "initial_buffers is empty"),
        (dict(buffer_length=B, initial_buffers=bytes(16)), "has 16 bytes; expected 6 float64"),
        (dict(initial_buffers=bytes(8)), "buffer_length is 0"),
        (
            dict(
                buffer_length=B,
                initial_buffers=bytes(8 * B),
                counters=[ps_pb2.Span(start=5, length=2)],
            ),
            "counter span [5, 7) reaches past the buffer range [0, 6)",
        ),
    ],
)
def test_bad_buffer_config_is_invalid_and_creates_nothing(
    client: ShardClient, config: dict[str, Any], message: str
) -> None:
    # Prepare
    proto = ps_pb2.ShardJobConfig(job_id="x", length=4, mode="async", optimizer=sgd(), **config)

    def stream() -> Any:
        yield ps_pb2.InitJobChunk(config=proto)
        yield ps_pb2.InitJobChunk(data=bytes(16))

    # Execute
    code, details = rpc_failure(lambda: client.stub.InitJob(stream(), timeout=10))

    # Assert
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert rpc_failure(lambda: client.stats("x"))[0] == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("push", "message", "reason"),
    [
        (dict(grad_scale=-2.0), "grad_scale -2.0 is not a positive", "invalid"),
        (dict(grad_scale=float("nan")), "grad_scale nan is not a positive", "invalid"),
        (dict(grad_scale=float("inf")), "grad_scale inf is not a positive", "invalid"),
        (dict(buffer_delta=bytes(8 * B - 8)), "40 bytes but job b keeps 6", "invalid"),
        (
            dict(buffer_delta=torch.tensor([0, 0, float("nan"), 0, 0, 0])),
            "NaN or Inf values in the buffer_delta",
            "nonfinite",
        ),
    ],
)
def test_bad_push_extras_are_invalid_and_apply_nothing(
    client: ShardClient, push: dict[str, Any], message: str, reason: str
) -> None:
    # Prepare
    client.init_job("b", torch.zeros(N), buffers=INITIAL, counters=COUNTERS)
    client.set_members("b", ["w1"], 1)

    # Execute
    code, details = rpc_failure(lambda: client.push("b", "w1", torch.ones(N), seq=1, **push))

    # Assert
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    stats = client.stats("b")
    assert stats.version == 0 and stats.checksum == 0.0
    assert dict(stats.pushes_rejected) == {reason: 1}
    assert torch.equal(pulled_buffers(client.pull("b")[0]), INITIAL)


def test_a_scaled_push_over_grpc_equals_the_unscaled_one(client: ShardClient) -> None:
    # Prepare
    grad = torch.randn(N, generator=torch.Generator().manual_seed(4))
    for job in ("scaled", "plain"):
        client.init_job(
            job,
            torch.zeros(N),
            optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9),
        )
        client.set_members(job, ["w1"], 1)

    # Execute
    client.push("scaled", "w1", grad * 65536.0, seq=1, grad_scale=65536.0)
    client.push("plain", "w1", grad, seq=1)

    # Assert
    assert torch.equal(client.pull("scaled")[1], client.pull("plain")[1])
