"""The ParameterServer service over real sockets: every bad input answered with the right
status code while the parameters stay as they were."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch

from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server.conftest import N
from tests.support import rpc_failure

F32 = common_pb2.DTYPE_FLOAT32


def _init_stream(
    config: ps_pb2.ShardJobConfig | None, payload: bytes
) -> Iterator[ps_pb2.InitJobChunk]:
    if config is not None:
        yield ps_pb2.InitJobChunk(config=config)
    yield ps_pb2.InitJobChunk(data=payload)


@pytest.mark.parametrize(
    ("config", "payload", "message"),
    [
        (dict(job_id="", mode="async"), bytes(16), "job_id is empty"),
        (dict(job_id="x", mode="bsp"), bytes(16), "mode 'bsp' is not supported"),
        (dict(job_id="x", mode="async", optimizer=dict(name="sgd", lr=0)), bytes(16), "lr"),
        (dict(job_id="x", mode="async"), bytes(12), "ended after 12 of the announced 16"),
        (dict(job_id="x", mode="async"), bytes(20), "more than the announced 16"),
        (None, bytes(16), "must start with the config"),
    ],
)
def test_bad_init_job_is_invalid_and_creates_nothing(
    client: Any, config: dict[str, Any] | None, payload: bytes, message: str
) -> None:
    proto = None
    if config is not None:
        optimizer = common_pb2.OptimizerConfig(**config.pop("optimizer", dict(name="sgd", lr=1)))
        proto = ps_pb2.ShardJobConfig(length=4, optimizer=optimizer, **config)

    code, details = rpc_failure(
        lambda: client.stub.InitJob(_init_stream(proto, payload), timeout=10)
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert rpc_failure(lambda: client.stats("x"))[0] == grpc.StatusCode.NOT_FOUND


def test_init_job_twice_is_already_exists_and_keeps_the_first(
    client: Any, job: torch.Tensor
) -> None:
    before = client.stats("j").checksum
    code, _ = rpc_failure(lambda: client.init_job("j", torch.zeros(N)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert client.stats("j").checksum == before


def test_unknown_job_is_not_found_everywhere(client: Any) -> None:
    for call in (
        lambda: client.pull("nope"),
        lambda: client.push("nope", "w1", torch.ones(4), seq=1),
        lambda: client.stats("nope"),
        lambda: client.set_members("nope", ["w1"], 1),
        lambda: client.drop("nope"),
    ):
        code, details = rpc_failure(call)
        assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details


@pytest.mark.parametrize(
    ("push", "code", "message", "reason"),
    [
        (
            dict(grad=torch.ones(N - 1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "announces 2999 values",
            "invalid",
        ),
        (
            dict(dtype=7, payload=bytes(4 * N)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown dtype 7",
            "invalid",
        ),
        (
            dict(payload=bytes(4 * N - 8)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ended after 11992 of the announced 12000",
            "invalid",
        ),
        (
            dict(grad=torch.full((N,), float("nan"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or Inf",
            "nonfinite",
        ),
        (
            dict(grad=torch.full((N,), float("inf"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or Inf",
            "nonfinite",
        ),
        (
            dict(worker="w9"),
            grpc.StatusCode.NOT_FOUND,
            "worker w9 is not a member of job j",
            "not_member",
        ),
        (dict(base_version=4), grpc.StatusCode.INVALID_ARGUMENT, "ahead", "invalid"),
        (dict(bucket_bytes=6), grpc.StatusCode.INVALID_ARGUMENT, "whole number", "invalid"),
        (
            dict(bucket_bytes=4096, dtype=common_pb2.DTYPE_FLOAT16, payload=bytes(2 * N)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "only for raw float32",
            "invalid",
        ),
        (  # the test client's 4096-byte chunks cross the 4000-byte buckets
            dict(bucket_bytes=4000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spans the end of the bucket",
            "invalid",
        ),
    ],
)
def test_bad_push_gets_its_code_and_changes_nothing(
    client: Any,
    job: torch.Tensor,
    push: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
    reason: str,
) -> None:
    before = client.stats("j")
    grad = push.pop("grad", torch.ones(N))
    worker = push.pop("worker", "w1")

    got, details = rpc_failure(lambda: client.push("j", worker, grad, seq=1, **push))

    assert got == code and message in details
    after = client.stats("j")
    assert after.checksum == before.checksum and after.version == 0
    assert dict(after.pushes_rejected) == {reason: 1}
    assert torch.equal(client.pull("j", "w1")[1], job)


def test_push_stream_without_a_header_or_with_two_is_invalid(
    client: Any, job: torch.Tensor
) -> None:
    header = ps_pb2.PushHeader(job_id="j", worker_id="w1", seq=1, length=N, dtype=F32)
    data = ps_pb2.PushChunk(data=bytes(4 * N))
    streams = [
        ("must start with a PushHeader", [data]),
        ("must start with a PushHeader", []),
        ("second header", [ps_pb2.PushChunk(header=header), ps_pb2.PushChunk(header=header), data]),
    ]
    for message, chunks in streams:

        def call(c: list[ps_pb2.PushChunk] = chunks) -> object:
            return client.stub.Push(iter(c), timeout=10)

        code, details = rpc_failure(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert client.stats("j").version == 0


def test_bad_pull_requests(client: Any, job: torch.Tensor) -> None:
    code, details = rpc_failure(lambda: client.pull("j", "w1", dtype=9))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown dtype 9" in details
    code, details = rpc_failure(lambda: client.pull("j", "w1", chunk_bytes=1 << 30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "chunk_bytes" in details
    code, details = rpc_failure(lambda: client.pull("j", "w9"))
    assert code == grpc.StatusCode.NOT_FOUND and "it holds no lease" in details
