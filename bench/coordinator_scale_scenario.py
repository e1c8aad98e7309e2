"""One scenario of bench/coordinator_scale.py: a fresh cluster from a source tree, its job, N
simulated workers, the measured window (with the coordinator killed and restarted inside it
when asked), and the row of figures that the scenario reports."""

from __future__ import annotations

import argparse
import linecache
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import coordinator_scale_figures as figs
from bench.coordinator_scale_model import Tiny
from bench.coordinator_scale_setup import Sims, TreeCluster, start_sims, stop_sims, wait_ready
from bench.proc_sampler import ProcSampler
from pscluster.client.local import ProcessHandle
from pscluster.client.sdk import Client, Job

ROWS, PARTITIONS, TEST_ROWS, EPOCHS = 4000, 2000, 100, 10_000
SHARDS = 2
AFTER_RESTART_MIN = 15.0  # seconds measured after a restart at least


@dataclass
class Window:
    """The measured window: its bounds, the kill inside it (if any) and the coordinator's
    log growth over its steady part (up to the kill)."""

    t0: float
    t1: float
    kill: dict[str, float] | None  # t_kill, t_up
    log_path: Path
    log_bytes: int


@dataclass
class Load:
    """What one scenario measured, before it is turned into figures."""

    begin: float  # the simulated workers started
    registered: int
    register_s: float | None
    window: Window
    parts: list[dict[str, Any]]  # the records of each simulated-worker process
    sampler: ProcSampler
    job: dict[str, Any]
    log_text: str


def submit(client: Client) -> Job:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    xt = rng.normal(size=(TEST_ROWS, 4)).astype(np.float32)
    return client.submit(
        Tiny,
        (x, (x[:, 0] > 0).astype(np.int64)),
        (xt, (xt[:, 0] > 0).astype(np.int64)),
        mode="async",
        epochs=EPOCHS,
        batch_size=ROWS // PARTITIONS,  # one batch per partition
        partitions=PARTITIONS,
        name="coordinator-scale",
    )


def job_state(job: Job) -> dict[str, Any]:
    """The job's state, epoch and steps at the end (it must still be running)."""
    for _ in range(10):
        try:
            info = job.info()
        except Exception as e:  # an overloaded coordinator refuses calls now and then
            error = repr(e)
            time.sleep(1.0)
            continue
        return {"state": info.state, "epoch": info.epoch, "steps": info.steps}
    return {"state": "unknown", "error": error}


def scenario(
    label: str, tree: Path, workers: int, args: argparse.Namespace, kill_at: float | None
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"coordinator-scale-{label}-{workers}-"))
    # Profiled only without a kill: the restarted coordinator would write over the stacks.
    folded = tmp / "coordinator.folded" if args.profile and kill_at is None else None
    cluster = TreeCluster(tree, folded, shards=SHARDS, workers=0, state_dir=tmp / "cluster")
    try:
        cluster.start()
        load = run_load(cluster, workers, args, kill_at, tmp, folded)
    finally:
        cluster.stop()
        stacks = folded.read_text() if folded is not None and folded.exists() else None
        shutil.rmtree(tmp, ignore_errors=True)
    return scenario_row(label, tree, workers, load, stacks)


def run_load(
    cluster: TreeCluster,
    workers: int,
    args: argparse.Namespace,
    kill_at: float | None,
    tmp: Path,
    folded: Path | None,
) -> Load:
    """Submit the job, start the simulated workers, measure the window, stop the workers."""
    coordinator = cluster.coordinator
    assert coordinator is not None
    with cluster.client() as client:
        job = submit(client)
        deadline = time.monotonic() + 60
        while job.info().state != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        begin = time.monotonic()
        samples = ROWS // PARTITIONS
        sims = start_sims(
            cluster.address, workers, args.procs, tmp, SHARDS, samples, args.task_seconds
        )
        try:
            sampler = sample_processes(cluster, coordinator, sims)
            registered, register_s = wait_ready(sims, workers, 60 + workers * 0.2)
            time.sleep(args.warmup)
            window = measure_window(cluster, coordinator, args.seconds, kill_at, folded)
            parts = stop_sims(sims)
        except BaseException:
            for p in sims.procs:
                p.kill()
            raise
        sampler.stop()
        info = job_state(job)  # once the workers stopped: an overloaded coordinator refuses
    log_text = window.log_path.read_text(errors="replace")
    return Load(begin, registered, register_s, window, parts, sampler, info, log_text)


def sample_processes(cluster: TreeCluster, coordinator: ProcessHandle, sims: Sims) -> ProcSampler:
    return ProcSampler(
        {
            "coordinator": lambda: [coordinator.pid],
            "shards": lambda: [h.pid for h in cluster.shard_handles],
            "sims": lambda: [p.pid for p in sims.procs],
            "bench": lambda: [os.getpid()],
        }
    ).start()


def measure_window(
    cluster: TreeCluster,
    coordinator: ProcessHandle,
    seconds: float,
    kill_at: float | None,
    folded: Path | None,
) -> Window:
    """Wait out ``seconds`` (profiling the coordinator meanwhile with ``folded``); with
    ``kill_at``, SIGKILL the coordinator that far in, restart it, and measure at least
    AFTER_RESTART_MIN seconds after it is back."""
    t0 = time.monotonic()
    if folded is not None:
        Path(f"{folded}.on").touch()
    log_path = coordinator.log_path
    log0 = log_path.stat().st_size
    kill: dict[str, float] | None = None
    end = t0 + seconds
    if kill_at is not None:
        time.sleep(max(0.0, t0 + kill_at - time.monotonic()))
        killed = time.monotonic()
        log1 = log_path.stat().st_size
        cluster.kill(coordinator, signal.SIGKILL)
        cluster.restart(coordinator)
        up = time.monotonic()
        kill = {"t_kill": killed, "t_up": up}
        end = max(end, up + AFTER_RESTART_MIN)
    time.sleep(max(0.0, end - time.monotonic()))
    t1 = time.monotonic()
    if folded is not None:
        Path(f"{folded}.on").unlink()
    if kill is None:
        log1 = log_path.stat().st_size
    return Window(t0, t1, kill, log_path, log1 - log0)


def scenario_row(
    label: str, tree: Path, workers: int, load: Load, stacks: str | None
) -> dict[str, Any]:
    rec = figs.merge(load.parts)
    w = load.window
    steady_end = w.kill["t_kill"] if w.kill else w.t1
    row: dict[str, Any] = {
        "tree": label,
        "workers": workers,
        "sim_processes": len(load.parts),
        "registered": load.registered,
        "register_s": load.register_s,
        "figures": figs.window(rec, w.t0, steady_end),
        "whole_run": figs.window(rec, load.begin, w.t1),
        "cpu": cpu_figures(load.sampler, w.t0, steady_end),
        "coordinator_log": {
            "bytes_per_s": round(w.log_bytes / max(steady_end - w.t0, 1e-9)),
            "declared_dead": load.log_text.count("is dead: no heartbeat"),
        },
        "lost": figs.lost_leases(rec),
        "job": load.job,
        "unfinished_sim_threads": sum(p.get("unfinished_threads", 0) for p in load.parts),
        "series": {"t0_s": round(w.t0 - load.begin, 2), **figs.series(rec, load.begin, w.t1)},
    }
    if stacks is not None:
        row["profile"] = figs.profile(stacks, lambda frame: source_line(tree, frame))
    if w.kill is not None:
        row["kill"] = kill_figures(rec, w, row["lost"], load.log_text)
    return row


def cpu_figures(sampler: ProcSampler, t0: float, t1: float) -> dict[str, Any]:
    return {
        "coordinator_pct": round(sampler.cpu_percent("coordinator", t0, t1), 1),
        "coordinator_rss_mb": round(sampler.peak("coordinator", t0, t1) / 1024, 1),
        "coordinator_threads": sampler.peak("coordinator", t0, t1, "threads"),
        "shards_pct": round(sampler.cpu_percent("shards", t0, t1), 1),
        "sims_pct": round(sampler.cpu_percent("sims", t0, t1), 1),
        "sims_rss_mb": round(sampler.total("sims", t0, t1) / 1024, 1),
        "bench_pct": round(sampler.cpu_percent("bench", t0, t1), 1),
        "machine_pct": round(sampler.machine_percent(t0, t1), 1),
    }


def kill_figures(
    rec: figs.Records, w: Window, lost: dict[str, Any], log_text: str
) -> dict[str, Any]:
    """The outage, the first acknowledged completion after the kill, the lost-lease check
    and the figures after the restart."""
    if w.kill is None:
        raise ValueError("kill_figures needs a window with a kill")
    t_kill, t_up = w.kill["t_kill"], w.kill["t_up"]
    acks_after = [a[0] for a in rec.get("acks", []) if a[0] > t_kill]
    return {
        "at_s": round(t_kill - w.t0, 2),
        "outage_s": round(t_up - t_kill, 2),
        "first_ack_after_kill_s": round(min(acks_after) - t_kill, 2) if acks_after else None,
        "lost": lost,
        "after": figs.window(rec, t_up, w.t1),
        "restored_log_lines": log_text.count("restored") - log_text.count("not restored"),
    }


def source_line(tree: Path, frame: str) -> str:
    """The source text of a sampled frame ``pscluster/...py:function:line`` of ``tree``."""
    path, _, line = frame.rsplit(":", 2)
    return linecache.getline(str(tree / path), int(line))
