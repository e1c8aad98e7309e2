"""The record of a running local cluster, ``<state_dir>/cluster.json``, and stopping it.

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
from pathlib import Path
from typing import Any

from pscluster.client import processes

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
