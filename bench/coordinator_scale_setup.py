"""What bench/coordinator_scale.py runs against: source trees (a path, or a git revision in a
temporary worktree), a LocalCluster whose processes import pscluster from a given tree, and
the processes of simulated workers (bench/sim_workers.py) with their start and stop."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pscluster.client.local import LocalCluster, ProcessHandle

ROOT = Path(__file__).resolve().parent.parent

# The coordinator under bench/stack_sampler.py (--profile): the same module and arguments.
PROFILED = (
    "import sys; sys.path.append({bench!r}); import stack_sampler; "
    "stack_sampler.start({path!r}); import runpy; "
    "runpy.run_module('pscluster.coordinator', run_name='__main__', alter_sys=True)"
)


class TreeCluster(LocalCluster):
    """A LocalCluster whose processes import pscluster from ``tree``: first on PYTHONPATH,
    and PYTHONSAFEPATH so that ``python -m`` does not put the working directory (maybe
    another checkout) in front of it. With ``profile`` (a path), the coordinator runs under
    bench/stack_sampler.py, which writes its stacks there."""

    def __init__(self, tree: Path, profile: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tree = tree
        self.profile = profile

    def _server_handle(self, role: str, index: int, port: int) -> ProcessHandle:
        handle = super()._server_handle(role, index, port)
        if role == "coordinator" and self.profile is not None:
            if handle.argv[:2] != ["-m", "pscluster.coordinator"]:
                raise RuntimeError(f"cannot profile a coordinator started as {handle.argv}")
            program = PROFILED.format(bench=str(ROOT / "bench"), path=str(self.profile))
            handle.argv = ["-c", program, *handle.argv[2:]]
        return handle

    def _env(self, role_env: dict[str, str]) -> dict[str, str]:
        env = super()._env(role_env)
        env["PYTHONPATH"] = os.pathsep.join([str(self.tree), env.get("PYTHONPATH", "")])
        env["PYTHONSAFEPATH"] = "1"
        return env


def git(tree: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
    return done.stdout.strip()


def tree_info(tree: Path) -> dict[str, Any]:
    """The tree's commit, its uncommitted changes under pscluster/, and where a process of
    the cluster really imports pscluster from."""
    env = TreeCluster(tree, shards=1, workers=0)._env({})
    probe = subprocess.run(
        [sys.executable, "-c", "import pscluster; print(pscluster.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    imports = Path(probe.stdout.strip()).parent.parent if probe.returncode == 0 else None
    if imports is None or imports.resolve() != tree.resolve():
        raise SystemExit(f"a cluster process would import pscluster from {imports}, not {tree}")
    return {
        "path": str(tree),
        "commit": git(tree, "rev-parse", "HEAD"),
        "subject": git(tree, "log", "-1", "--format=%s"),
        "uncommitted": git(tree, "status", "--porcelain", "--", "pscluster").splitlines(),
    }


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out (detached) in a temporary git worktree, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="coordinator-scale-"))
    path = tmp / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


# --- simulated workers ---
@dataclass
class Sims:
    procs: list[subprocess.Popen[str]]
    outs: list[Path]
    logs: list[Path]
    ready: queue.Queue[tuple[int, float]]


def start_sims(
    address: str,
    workers: int,
    procs: int,
    tmp: Path,
    shards: int,
    samples: int,
    task_seconds: float = 0.0,
) -> Sims:
    """``workers`` simulated workers in ``procs`` processes (as even as can be)."""
    procs = min(procs, workers)
    counts = [workers // procs + (i < workers % procs) for i in range(procs)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PYTHONSAFEPATH", None)
    sims = Sims([], [], [], queue.Queue())
    for i, n in enumerate(counts):
        out, log = tmp / f"sim-{i}.json", tmp / f"sim-{i}.log"
        argv = ["-m", "bench.sim_workers", "--address", address, "--count", str(n)]
        argv += ["--shards", str(shards), "--samples", str(samples), "--out", str(out)]
        argv += ["--task-seconds", str(task_seconds)]
        with log.open("w") as err:
            p = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        sims.procs.append(p)
        sims.outs.append(out)
        sims.logs.append(log)
        threading.Thread(target=_read_ready, args=(p, sims.ready), daemon=True).start()
    return sims


def _read_ready(p: subprocess.Popen[str], ready: queue.Queue[tuple[int, float]]) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("ready"):
            _, n, seconds = line.split()
            ready.put((int(n), float(seconds)))


def wait_ready(sims: Sims, workers: int, timeout: float) -> tuple[int, float | None]:
    """(workers registered, seconds until the last process had all its workers registered)."""
    started = time.monotonic()
    registered, slowest = 0, 0.0
    for _ in sims.procs:
        try:
            n, seconds = sims.ready.get(timeout=max(0.1, started + timeout - time.monotonic()))
        except queue.Empty:
            return registered, None
        registered, slowest = registered + n, max(slowest, seconds)
    return registered, slowest


def stop_sims(sims: Sims) -> list[dict[str, Any]]:
    for p in sims.procs:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.close()
    parts = []
    for p, out, log in zip(sims.procs, sims.outs, sims.logs, strict=True):
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if not out.exists():
            raise RuntimeError(
                f"simulated workers (pid {p.pid}) left no records:\n{log.read_text()[-3000:]}"
            )
        parts.append(json.loads(out.read_text()))
    return parts
