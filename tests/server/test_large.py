"""A 100M-parameter (400 MB) job through gRPC: chunked streams mean no message-size limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from pscluster.transport import wire
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

N = 100_000_000
CHUNK = 1 << 20


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_100m_parameters_init_pull_push(client: Any) -> None:
    values = torch.linspace(-1.0, 1.0, N)
    config = ps_pb2.ShardJobConfig(
        job_id="big",
        start=N,
        length=N,
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.5),
    )

    def init() -> Iterator[ps_pb2.InitJobChunk]:
        yield ps_pb2.InitJobChunk(config=config)
        for piece in wire.chunks(wire.encode(values), CHUNK):  # one chunk alive at a time
            yield ps_pb2.InitJobChunk(data=piece)

    reply = client.stub.InitJob(init(), timeout=240)
    assert reply.checksum == pytest.approx(float(values.double().sum()), abs=1e-3)
    client.set_members("big", ["w1"], 1)

    pulled = _pull(client)
    assert torch.equal(pulled, values)
    del pulled

    grad = torch.full((N,), 2.0)
    header = ps_pb2.PushHeader(
        job_id="big", worker_id="w1", seq=1, length=N, dtype=common_pb2.DTYPE_FLOAT32
    )

    def push() -> Iterator[ps_pb2.PushChunk]:
        yield ps_pb2.PushChunk(header=header)
        for piece in wire.chunks(wire.encode(grad), CHUNK):
            yield ps_pb2.PushChunk(data=piece)

    assert client.stub.Push(push(), timeout=240).outcome == ps_pb2.PUSH_OUTCOME_APPLIED
    values.sub_(1.0)  # lr 0.5 x grad 2
    assert torch.equal(_pull(client), values)
    client.drop("big")


def _pull(client: Any) -> torch.Tensor:
    stream = iter(client.stub.Pull(ps_pb2.PullRequest(job_id="big", worker_id="w1"), timeout=240))
    header = next(stream).header
    assert (header.start, header.length) == (N, N)
    values = torch.empty(N)
    wire.fill(wire.byte_view(values), (chunk.data for chunk in stream))
    return values
