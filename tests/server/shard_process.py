"""A real shard process for tests: ``python -m pscluster.server`` on a free loopback port.

The port is read from the shard's own "serving ... on host:port" log line, so tests pass
``--port 0`` and never race another process for a port. Every log line is kept for failure
messages.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving pscluster\.v1\.ParameterServer on 127\.0\.0\.1:(\d+)")


class ShardProcess:
    """One shard process; ``env`` is added to this process's environment, where PSC_* of the
    caller's shell are dropped so that a developer's settings cannot leak in."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PSC_")}
        self.env = {**base, "PSC_LOG_LEVEL": "INFO", **(env or {})}
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the shard was not started"
        return self.proc.pid

    def start(self, port: int = 0, timeout: float = 90) -> int:
        """Start the shard and return its port once it serves."""
        args = ["--port", str(port), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pscluster.server", *args],
            cwd=ROOT,
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, f"the shard exited: {self.log[-20:]}"
                continue
            match = SERVING.search(line)
            if match:
                return int(match.group(1))
        raise AssertionError(f"no 'serving' line within {timeout:.0f} s: {self.log[-20:]}")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as an orchestrator stops it; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Kill it if it still runs (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
