"""The record of a running local cluster, ``<state_dir>/cluster.json``: written as processes
start, read to refuse a second cluster on the same state, and used to stop a detached one.

``pscluster up --detach`` returns while its processes run on; ``pscluster down`` is another
process and finds them only through this file. Pids are checked against /proc before any
signal is sent, so a stale file never kills an unrelated process that reused a pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pscluster.client import processes
from pscluster.client.processes import ProcessHandle, StartError

STATE_FILE = "cluster.json"


def read_state(state_dir: str | Path) -> dict[str, Any] | None:
    """The recorded cluster of ``state_dir`` if any of its processes still runs, else None
    (a leftover file of a cluster that died is removed)."""
    path = Path(state_dir) / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if not any(processes.is_pscluster_process(p["pid"]) for p in state.get("processes", [])):
        path.unlink(missing_ok=True)
        return None
    return state


def refuse_if_running(state_dir: Path) -> None:
    """StartError if a cluster recorded in ``state_dir`` still runs: a second one would share
    its coordinator's database."""
    running = read_state(state_dir)
    if running is not None:
        raise StartError(
            f"a local cluster is already running from {state_dir} "
            f"(coordinator {running.get('address')}); stop it with `pscluster down"
            f" --state-dir {state_dir}` or use another --state-dir"
        )


def write_state(
    state_file: Path,
    address: str | None,
    shard_addresses: Sequence[str],
    handles: Sequence[ProcessHandle],
    metrics_urls: Mapping[str, str],
) -> None:
    """Record the cluster's started processes, replacing the file whole (never half-written)."""
    state = {
        "address": address,
        "shards": list(shard_addresses),
        "started_unix": time.time(),
        "processes": [
            {
                "name": h.name,
                "role": h.role,
                "pid": h.pid,
                "address": h.address,
                "log": str(h.log_path),
                "metrics": metrics_urls.get(h.name),
            }
            for h in handles
            if h.popen is not None
        ],
    }
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_file)


def stop_detached(state_dir: str | Path, grace: float = 5.0) -> list[str]:
    """Stop the cluster recorded in ``state_dir``; the names of the processes it stopped.

    An empty list means nothing was running. Workers go first, shards last, as in stop().
    """
    state = read_state(state_dir)
    if state is None:
        return []
    procs = state.get("processes", [])
    stopped = []
    for role in ("worker", "coordinator", "shard"):
        group = [p for p in procs if p["role"] == role and processes.is_pscluster_process(p["pid"])]
        for p in group:
            _kill(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in group:
            if not _wait_gone(p["pid"], deadline):
                _kill(p["pid"], signal.SIGKILL)
                _wait_gone(p["pid"], time.monotonic() + 5.0)
            stopped.append(p["name"])
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, deadline: float) -> bool:
    while True:
        # Reap it if it is our own child (a test that detaches and stops in one process).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not processes.is_pscluster_process(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
