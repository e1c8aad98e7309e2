"""``python -m pscluster.server`` as a real process: it reports its port, serves, and stops
cleanly on SIGTERM (what orchestrators send)."""

from __future__ import annotations

import subprocess
import sys

import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc
from tests.server.shard_process import ROOT, ShardProcess


def test_shard_process_serves_and_stops_on_sigterm() -> None:
    shard = ShardProcess({"PSC_SHARD_PORT": "1"})  # --port must win
    try:
        port = shard.start()

        channel = open_channel(f"127.0.0.1:{port}")
        wait_ready(channel, timeout=10)
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(
            health_pb2.HealthCheckRequest(service="pscluster.v1.ParameterServer"), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        stub = ps_grpc.ParameterServerStub(channel)
        config = ps_pb2.ShardJobConfig(
            job_id="p",
            length=3,
            mode="async",
            optimizer=common_pb2.OptimizerConfig(name="sgd", lr=1),
        )
        values = torch.tensor([1.0, 2.0, 3.0])
        chunks = [
            ps_pb2.InitJobChunk(config=config),
            ps_pb2.InitJobChunk(data=bytes(wire.encode(values))),
        ]
        assert stub.InitJob(iter(chunks), timeout=10).checksum == 6.0
        pulled = list(stub.Pull(ps_pb2.PullRequest(job_id="p"), timeout=10))
        assert pulled[1].data == bytes(wire.encode(values))
        channel.close()

        assert shard.terminate() == 0
    finally:
        shard.stop()


def test_bad_flags_fail_fast() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pscluster.server", "--port", "not-a-port"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--port" in done.stderr
