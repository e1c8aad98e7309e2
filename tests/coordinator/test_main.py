"""The coordinator as a process: ``python -m pscluster.coordinator`` serves, then stops on
SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from tests.coordinator.conftest import RPC_TIMEOUT

START_TIMEOUT = 60.0


def _closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_the_module_serves_on_a_free_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    # Prepare: environment says one thing, flags override it.
    shards = [_closed_address(), _closed_address()]
    env = {**os.environ, "PSC_SHARDS": "env-only:1", "PSC_STATE_DIR": str(tmp_path / "env")}
    command = [
        sys.executable,
        "-m",
        "pscluster.coordinator",
        "--port",
        "0",
        "--shards",
        ",".join(shards),
        "--state-dir",
        str(tmp_path / "flags"),
    ]
    # Execute
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stderr = proc.stderr

    def forward() -> None:
        for line in stderr:
            lines.put(line)

    threading.Thread(target=forward, daemon=True).start()
    try:
        port = None
        while port is None:
            line = lines.get(timeout=START_TIMEOUT)
            found = re.search(r"serving pscluster\.v1\.Coordinator.* on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        channel = open_channel(f"127.0.0.1:{port}")
        wait_ready(channel, timeout=RPC_TIMEOUT)
        stub = co_grpc.CoordinatorStub(channel)
        status = stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=RPC_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=RPC_TIMEOUT)
    # Assert
    assert [s.address for s in status.shards] == shards
    assert not any(s.healthy for s in status.shards)
    assert code == 0
    assert (tmp_path / "flags" / "coordinator.sqlite").is_file()
    assert not (tmp_path / "env").exists()
