"""``python -m pscluster.server`` as a real process: it reports its port, serves, and stops
cleanly on SIGTERM (what orchestrators send)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving pscluster\.v1\.ParameterServer on 127\.0\.0\.1:(\d+)")


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def test_shard_process_serves_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PSC_LOG_LEVEL": "INFO", "PSC_SHARD_PORT": "1"}  # --port must win
    proc = subprocess.Popen(
        [sys.executable, "-m", "pscluster.server", "--port", "0", "--host", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            try:
                match = SERVING.search(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, "the shard process exited before serving"
                continue
            port = int(match.group(1)) if match else None
        assert port is not None, "no 'serving ... on host:port' log line within 60 s"

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

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_bad_flags_fail_fast() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pscluster.server", "--port", "not-a-port"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--port" in done.stderr
