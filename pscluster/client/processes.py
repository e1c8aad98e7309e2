"""Child processes of a local cluster: start one with its log file, wait until it serves, stop it.

Every role runs as ``python -m pscluster.<role>`` in its own session, so a Ctrl-C in the
terminal reaches only the launcher, which then stops the children in order (workers before
the servers they talk to) instead of all of them dying at once mid-push.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.config import Settings
from pscluster.transport import tls

# The folder holding the pscluster package, put on the children's PYTHONPATH so that they run
# this very code even where the package is not installed (a source checkout).
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class StartError(RuntimeError):
    """A process of the local cluster did not come up; the message carries its log tail."""


@dataclass
class ProcessHandle:
    """One child process: its role, how it was started, and where it logs."""

    role: str  # "coordinator" | "shard" | "worker"
    index: int
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    address: str | None = None  # host:port for servers
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.role if self.role == "coordinator" else f"{self.role}-{self.index}"

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Appended, so that a restarted process keeps the log of the run that crashed.
        self._log = self.log_path.open("ab")
        self._log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            [sys.executable, *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; True if it has."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def kill(handle: ProcessHandle, sig: int, timeout: float) -> None:
    """Send ``sig`` and wait until the process has exited; TimeoutError if it has not."""
    handle.signal(sig)
    if not handle.wait(timeout):
        raise TimeoutError(f"{handle.name} still running {timeout:g} s after signal {sig}")


def restart(handle: ProcessHandle, timeout: float) -> ProcessHandle:
    """Start a stopped process again as it was started; a server is waited for until it serves."""
    if handle.alive():
        raise RuntimeError(f"{handle.name} is still running (pid {handle.pid})")
    handle.close_log()
    handle.start()
    if handle.address is not None:
        wait_serving(handle, timeout)
    return handle


def stop_all(handles: Iterable[ProcessHandle], grace: float) -> None:
    """SIGTERM every live process, give them ``grace`` seconds together, then SIGKILL the rest."""
    handles = list(handles)
    for h in handles:
        h.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for h in handles:
        if not h.wait(max(0.0, deadline - time.monotonic())):
            h.signal(signal.SIGKILL)
            h.wait(10.0)
        h.close_log()


def free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel says are free now; all sockets stay open until every port is picked so
    that the same port is never handed out twice (another program may still grab one later;
    callers retry on a bind failure)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


TLS_FIELDS = ("tls_cert", "tls_key", "tls_ca", "tls_client_auth", "tls_server_name")


def settings_from_env(
    env: Mapping[str, str], fields: Sequence[str] | None = None, **overrides: object
) -> Settings:
    """The Settings a process started with ``env`` reads (its ``PSC_*`` variables), so the
    launcher talks to it with the same token and TLS files it serves with. ``fields`` limits
    which variables are taken (None: all). Raises ValueError for an invalid value."""
    values: dict[str, object] = {
        k[len("PSC_") :].lower(): v for k, v in env.items() if k.startswith("PSC_")
    }
    if fields is not None:
        values = {k: v for k, v in values.items() if k in fields}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def wait_serving(handle: ProcessHandle, timeout: float) -> None:
    """Block until the server answers SERVING to a standard gRPC health check.

    The check dials as the process serves: TLS from its own ``PSC_TLS_*`` variables (only
    those are read here: any other bad setting is the process's to report, in its log).
    Health checks need no token. Raises StartError with the process's log tail if it exits
    first or the deadline passes, or if its TLS settings are unusable.
    """
    if handle.address is None:
        raise ValueError(f"{handle.name} is not a server")
    try:
        settings = settings_from_env(handle.env, TLS_FIELDS)
        tls.channel_credentials(settings)  # a missing or unreadable file: say so now
    except ValueError as e:
        raise StartError(f"cannot check whether {handle.name} is serving: {e}") from e
    # Short reconnect backoff: the default grows to minutes, far longer than a start takes.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    with tls.dial(handle.address, settings, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            code = handle.returncode()
            if code is not None:
                raise StartError(
                    f"{handle.name} exited with code {code} before serving on {handle.address}; "
                    f"last lines of {handle.log_path}:\n{handle.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartError(
                    f"{handle.name} was not serving on {handle.address} after {timeout:g} s "
                    f"({last_error}); last lines of {handle.log_path}:\n{handle.log_tail()}"
                )
            try:
                request = health_pb2.HealthCheckRequest(service="")
                reply = stub.Check(request, timeout=min(1.0, remaining))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = f"health status {reply.status}"
            except grpc.RpcError as e:
                last_error = f"{e.code().name}"  # type: ignore[attr-defined]
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def child_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    env = {**base, **overrides}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, path) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def bind_failed(handle: ProcessHandle) -> bool:
    tail = handle.log_tail(50).lower()
    return "could not bind" in tail or "address already in use" in tail


def is_pscluster_process(pid: int, modules: Sequence[str] = ("pscluster",)) -> bool:
    """True if ``pid`` runs and is one of ours (guards ``down`` against a reused pid).

    Zombies count as gone: a process that exited but was not reaped yet serves nothing.
    """
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
        return any(m in cmdline for m in modules)
    try:  # no /proc (macOS): liveness only
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
