"""Fixtures for the shard tests: a real shard on a free port, and a small client for it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.server.job_buffers import encode_buffers
from pscluster.server.main import serve
from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.transport.server import RunningServer
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

RPC_TIMEOUT = 30.0
N = 3000  # the length of job "j": 12 000 bytes, several chunks at the test client's 4 KiB


def sgd(lr: float = 0.1) -> common_pb2.OptimizerConfig:
    return common_pb2.OptimizerConfig(name="sgd", lr=lr)


class ShardClient:
    """Raw calls to a shard, the way a worker or the coordinator makes them."""

    def __init__(self, stub: ps_grpc.ParameterServerStub, chunk_bytes: int = 4096) -> None:
        self.stub = stub
        self.chunk_bytes = chunk_bytes

    def init_job(
        self,
        job_id: str,
        values: torch.Tensor,
        *,
        mode: str = "async",
        staleness: int = 0,
        optimizer: common_pb2.OptimizerConfig | None = None,
        start: int = 0,
        length: int | None = None,
        backup_workers: int = 0,
        staleness_aware_lr: bool = False,
        buffers: torch.Tensor | None = None,
        counters: Sequence[tuple[int, int]] = (),
        buffer_start: int = 0,
    ) -> ps_pb2.InitJobReply:
        """``buffers``: the job's initial buffer values (sent as float64), ``counters`` the
        (start, length) spans of them that count."""
        config = ps_pb2.ShardJobConfig(
            job_id=job_id,
            start=start,
            length=values.numel() if length is None else length,
            mode=mode,
            staleness=staleness,
            optimizer=optimizer or sgd(),
            backup_workers=backup_workers,
            staleness_aware_lr=staleness_aware_lr,
            buffer_start=buffer_start,
            buffer_length=0 if buffers is None else buffers.numel(),
            counters=[ps_pb2.Span(start=start, length=n) for start, n in counters],
            initial_buffers=b"" if buffers is None else encode_buffers(buffers),
        )

        def stream() -> Iterator[ps_pb2.InitJobChunk]:
            yield ps_pb2.InitJobChunk(config=config)
            for piece in wire.chunks(wire.encode(values), self.chunk_bytes):
                yield ps_pb2.InitJobChunk(data=piece)

        return self.stub.InitJob(stream(), timeout=RPC_TIMEOUT)

    def set_members(
        self,
        job_id: str,
        workers: Sequence[str],
        generation: int,
        excluded: Sequence[str] = (),
    ) -> int:
        request = ps_pb2.SetMembersRequest(
            job_id=job_id,
            worker_ids=list(workers),
            generation=generation,
            excluded_worker_ids=list(excluded),
        )
        return self.stub.SetMembers(request, timeout=RPC_TIMEOUT).generation

    def pull(
        self,
        job_id: str,
        worker_id: str = "",
        *,
        min_version: int = 0,
        dtype: int = common_pb2.DTYPE_FLOAT32,
        chunk_bytes: int = 0,
        timeout: float = RPC_TIMEOUT,
    ) -> tuple[ps_pb2.PullHeader, torch.Tensor, int]:
        """(header, values as float32, number of data chunks)."""
        request = ps_pb2.PullRequest(
            job_id=job_id,
            worker_id=worker_id,
            min_version=min_version,
            dtype=dtype,  # type: ignore[arg-type]
            chunk_bytes=chunk_bytes,
        )
        stream = iter(self.stub.Pull(request, timeout=timeout))
        first = next(stream)
        assert first.WhichOneof("part") == "header"
        header = first.header
        data = bytearray()
        count = 0
        for chunk in stream:
            data += chunk.data
            count += 1
        return header, wire.decode(data, header.dtype, header.length), count

    def push(
        self,
        job_id: str,
        worker_id: str,
        grad: torch.Tensor,
        *,
        seq: int,
        base_version: int = 0,
        base_clock: int = 0,
        dtype: int = common_pb2.DTYPE_FLOAT32,
        length: int | None = None,
        payload: bytes | None = None,
        buffer_delta: torch.Tensor | bytes = b"",
        grad_scale: float = 0.0,
        bucket_bytes: int = 0,
        local_steps: int = 0,
    ) -> ps_pb2.PushReply:
        """``buffer_delta``: the buffers' change (a tensor, sent as float64, or raw bytes);
        ``grad_scale``: the loss scale ``grad`` (or ``payload``) was already multiplied by;
        ``local_steps`` > 0: ``grad`` is the change of that many local steps over lr."""
        if isinstance(buffer_delta, torch.Tensor):
            buffer_delta = encode_buffers(buffer_delta)
        header = ps_pb2.PushHeader(
            job_id=job_id,
            worker_id=worker_id,
            seq=seq,
            base_version=base_version,
            base_clock=base_clock,
            length=grad.numel() if length is None else length,
            dtype=dtype,  # type: ignore[arg-type]
            batch_size=1,
            buffer_delta=buffer_delta,
            grad_scale=grad_scale,
            bucket_bytes=bucket_bytes,
            local_steps=local_steps,
        )
        body = wire.encode(grad, dtype) if payload is None else memoryview(payload)

        def stream() -> Iterator[ps_pb2.PushChunk]:
            yield ps_pb2.PushChunk(header=header)
            for piece in wire.chunks(body, self.chunk_bytes):
                yield ps_pb2.PushChunk(data=piece)

        return self.stub.Push(stream(), timeout=RPC_TIMEOUT)

    def stats(self, job_id: str) -> common_pb2.ShardJobStats:
        return self.stub.GetJobStats(ps_pb2.JobStatsRequest(job_id=job_id), timeout=RPC_TIMEOUT)

    def drop(self, job_id: str) -> None:
        self.stub.DropJob(ps_pb2.DropJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)


@pytest.fixture
def settings() -> Settings:
    return Settings(host="127.0.0.1", pull_wait_seconds=5.0, grace_seconds=0.0)


@pytest.fixture
def shard_server(settings: Settings) -> Iterator[RunningServer]:
    running = serve(settings, port=0)
    yield running
    running.stop(0)


@pytest.fixture
def channel(shard_server: RunningServer, settings: Settings) -> Iterator[grpc.Channel]:
    channel = open_channel(f"127.0.0.1:{shard_server.port}", settings)
    wait_ready(channel, timeout=10)
    yield channel
    channel.close()


@pytest.fixture
def client(channel: grpc.Channel) -> ShardClient:
    return ShardClient(ps_grpc.ParameterServerStub(channel))


@pytest.fixture
def job(client: ShardClient) -> torch.Tensor:
    """Job "j": N values, async, plain SGD lr 0.1, member w1. Returns the initial values."""
    values = torch.randn(N, generator=torch.Generator().manual_seed(1))
    client.init_job("j", values)
    client.set_members("j", ["w1"], 1)
    return values
