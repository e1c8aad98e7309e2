"""A real shard on a free port, and raw calls to it that push compressed payloads."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.server.main import serve
from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.transport.server import RunningServer
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

RPC_TIMEOUT = 30.0
LR = 0.5


class CodecShard:
    """One job on a real shard, with pushes whose header and payload the test chooses."""

    def __init__(self, stub: ps_grpc.ParameterServerStub) -> None:
        self.stub = stub
        self.seq = 0

    def init_job(
        self, job_id: str, values: torch.Tensor, compression: common_pb2.CompressionConfig
    ) -> ps_pb2.InitJobReply:
        config = ps_pb2.ShardJobConfig(
            job_id=job_id,
            start=0,
            length=values.numel(),
            mode="async",
            optimizer=common_pb2.OptimizerConfig(name="sgd", lr=LR),
            compression=compression,
        )

        def stream() -> Iterator[ps_pb2.InitJobChunk]:
            yield ps_pb2.InitJobChunk(config=config)
            yield ps_pb2.InitJobChunk(data=bytes(wire.encode(values)))

        reply: ps_pb2.InitJobReply = self.stub.InitJob(stream(), timeout=RPC_TIMEOUT)
        self.stub.SetMembers(
            ps_pb2.SetMembersRequest(job_id=job_id, worker_ids=["w"], generation=1),
            timeout=RPC_TIMEOUT,
        )
        return reply

    def push(
        self,
        job_id: str,
        codec: str,
        payload: bytes,
        length: int,
        *,
        payload_bytes: int | None = None,
        chunk: int = 7,
    ) -> ps_pb2.PushReply:
        self.seq += 1
        header = ps_pb2.PushHeader(
            job_id=job_id,
            worker_id="w",
            seq=self.seq,
            length=length,
            batch_size=1,
            codec=codec,
            payload_bytes=len(payload) if payload_bytes is None else payload_bytes,
        )

        def stream() -> Iterator[ps_pb2.PushChunk]:
            yield ps_pb2.PushChunk(header=header)
            for i in range(0, len(payload), chunk):  # small chunks: the shard reassembles
                yield ps_pb2.PushChunk(data=payload[i : i + chunk])

        reply: ps_pb2.PushReply = self.stub.Push(stream(), timeout=RPC_TIMEOUT)
        return reply

    def stats(self, job_id: str) -> common_pb2.ShardJobStats:
        stats: common_pb2.ShardJobStats = self.stub.GetJobStats(
            ps_pb2.JobStatsRequest(job_id=job_id), timeout=RPC_TIMEOUT
        )
        return stats

    def values(self, job_id: str) -> torch.Tensor:
        chunks = list(self.stub.Pull(ps_pb2.PullRequest(job_id=job_id), timeout=RPC_TIMEOUT))
        header = chunks[0].header
        data = b"".join(c.data for c in chunks[1:])
        return wire.decode(data, header.dtype, header.length)


@pytest.fixture
def shard_server() -> Iterator[RunningServer]:
    running = serve(Settings(host="127.0.0.1", grace_seconds=0.0), port=0)
    yield running
    running.stop(0)


@pytest.fixture
def shard(shard_server: RunningServer) -> Iterator[CodecShard]:
    channel: grpc.Channel = open_channel(f"127.0.0.1:{shard_server.port}", Settings())
    wait_ready(channel, timeout=10)
    yield CodecShard(ps_grpc.ParameterServerStub(channel))
    channel.close()
