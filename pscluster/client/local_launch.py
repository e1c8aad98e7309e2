"""What starting one process of a local cluster involves: its command line and variables, a
free port that another program may take before the bind, and the wait until workers count.

:class:`~pscluster.client.local.LocalCluster` decides which processes run and in what order;
the details of each start live here, so the cluster's lifecycle reads without them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pscluster.client import processes
from pscluster.client.processes import ProcessHandle, StartError

if TYPE_CHECKING:  # the SDK imports torch; `pscluster up` and `down` do not need it
    from pscluster.client.info import ClusterStatus
    from pscluster.client.sdk import Client

_BIND_ATTEMPTS = 3


@dataclass(frozen=True)
class ServerLaunch:
    """How a shard or the coordinator is started: its name, argv and the role's variables
    (the cluster adds its own and the metrics port)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    address: str


def server_launch(
    role: str,
    index: int,
    host: str,
    port: int,
    state_dir: Path,
    shard_addresses: list[str],
    *,
    durable: bool = True,
) -> ServerLaunch:
    """Shard ``index`` or the coordinator (any other ``role``) serving on ``host:port``; a
    shard that is not ``durable`` keeps its jobs in memory only."""
    address = f"{host}:{port}"
    if role == "shard":
        name = f"shard-{index}"
        env = {
            "PSC_SHARD_PORT": str(port),
            "PSC_ADVERTISE": address,
            # Its identity when it registers (a cluster with register_shards).
            "PSC_SHARD_ID": name,
        }
        if durable:  # its write-ahead log and checkpoints: a restarted shard recovers them
            env["PSC_SHARD_DATA_DIR"] = str(state_dir / "shards" / name)
        argv = ["-m", "pscluster.server", "--port", str(port)]
        return ServerLaunch(name=name, argv=argv, env=env, address=address)
    shards = ",".join(shard_addresses)
    argv = ["-m", "pscluster.coordinator", "--port", str(port), "--shards", shards]
    argv += ["--state-dir", str(state_dir)]
    return ServerLaunch("coordinator", argv, {"PSC_COORDINATOR_PORT": str(port)}, address)


def torch_threads_env(num_workers: int) -> dict[str, str]:
    """The workers' intra-op thread count, unless the environment already sets it."""
    if "PSC_TORCH_THREADS" in os.environ:
        return {}
    # Workers on one machine share its cores: intra-op thread pools that together fit the
    # cores, instead of every process spawning a thread per core and all of them thrashing.
    cores = os.cpu_count() or 1
    return {"PSC_TORCH_THREADS": str(max(1, cores // max(1, num_workers)))}


def start_server(
    handle_on: Callable[[int], ProcessHandle], port: int, host: str, timeout: float, grace: float
) -> ProcessHandle:
    """Start the server ``handle_on(port)`` describes and wait until it serves; with ``port``
    0, on a free port, picking another when the bind fails.

    Raises StartError (the process stopped) if it exits or does not serve within ``timeout``.
    """
    for attempt in range(_BIND_ATTEMPTS):
        bound = port or processes.free_ports(host, 1)[0]
        handle = handle_on(bound)
        handle.start()
        try:
            processes.wait_serving(handle, timeout)
            return handle
        except StartError:
            # Another program may take a free port between the check and the bind; retry
            # with a new one, but only when we picked it.
            retry = port == 0 and attempt + 1 < _BIND_ATTEMPTS and processes.bind_failed(handle)
            processes.stop_all([handle], grace)
            if not retry:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


def wait_for_workers(
    client: Client, count: int, timeout: float, watch: Sequence[ProcessHandle], logs: Path
) -> None:
    """Block until the coordinator ``client`` talks to reports ``count`` live workers.

    StartError after ``timeout`` seconds, or at once if a process in ``watch`` (the workers
    just started) exits meanwhile; ``logs`` is the folder the message points to.
    """

    def alive(status: ClusterStatus) -> int:
        return sum(1 for w in status.workers if w.alive)

    _wait_for(client, alive, (count, "workers"), timeout, watch, logs)


def wait_for_shards(
    client: Client, count: int, timeout: float, watch: Sequence[ProcessHandle], logs: Path
) -> None:
    """Block until ``count`` shards have registered with the coordinator and are live (as
    :func:`wait_for_workers`, for a cluster whose shards register)."""

    def live(status: ClusterStatus) -> int:
        return sum(1 for s in status.registry if s.live and s.shard_id)

    _wait_for(client, live, (count, "shards"), timeout, watch, logs)


def _wait_for(
    client: Client,
    counted: Callable[[ClusterStatus], int],
    wanted: tuple[int, str],
    timeout: float,
    watch: Sequence[ProcessHandle],
    logs: Path,
) -> None:
    from pscluster.client.errors import PSClusterError

    count, what = wanted
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        dead = [w for w in watch if w.returncode() is not None]
        if dead:
            w = dead[0]
            raise StartError(
                f"{w.name} exited with code {w.returncode()}; last lines of "
                f"{w.log_path}:\n{w.log_tail()}"
            )
        try:
            found = counted(client.status())
        except PSClusterError:
            found = 0
        if found >= count:
            return
        time.sleep(0.2)
    raise StartError(
        f"only {found} of {count} {what} registered with the coordinator within "
        f"{timeout:g} s; see the logs in {logs}"
    )
