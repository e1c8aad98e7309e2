"""``pscluster up / down / status``: run a local cluster and look at any cluster's health."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from pscluster.client.cli_common import Address, Token, err, fail, out, user_errors
from pscluster.client.info import ClusterStatus, ShardInfo
from pscluster.client.local import DEFAULT_STATE_DIR, LocalCluster, stop_detached

StateDir = Annotated[
    Path,
    typer.Option(
        help="where the local cluster keeps its job database, the models and data of submitted "
        "jobs, its logs and cluster.json (the running processes)"
    ),
]


def up(
    local: Annotated[
        bool, typer.Option("--local", help="run the cluster as local processes")
    ] = False,
    shards: Annotated[int, typer.Option(min=1, help="parameter-server shards")] = 2,
    workers: Annotated[int, typer.Option(min=0, help="training workers")] = 3,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="coordinator port (0: a free one)")
    ] = 50051,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="seconds each process may take to start")
    ] = 90.0,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics", help="serve Prometheus metrics from every process (each on a free port)"
        ),
    ] = False,
    register_shards: Annotated[
        bool,
        typer.Option(
            "--register-shards",
            help="shards register with the coordinator (as in compose and Kubernetes) instead "
            "of being listed to it",
        ),
    ] = False,
    in_memory: Annotated[
        bool,
        typer.Option(
            "--in-memory",
            help="shards keep jobs in memory only: no log or checkpoints (faster), and a shard "
            "that restarts comes back without its jobs",
        ),
    ] = False,
) -> None:
    """Start a cluster: a coordinator, shards and workers. Ctrl-C stops it."""
    if not local:
        raise fail(
            "only local clusters start from here: use `pscluster up --local`; "
            "for containers run `docker compose up`"
        )
    # SIGTERM while starting behaves as Ctrl-C: start() then stops what it already started.
    signal.signal(signal.SIGTERM, _interrupt)
    with user_errors():
        cluster = LocalCluster(
            shards=shards,
            workers=workers,
            state_dir=state_dir,
            port=port,
            start_timeout=timeout,
            metrics=metrics,
            register_shards=register_shards,
            durable=not in_memory,
        )
        console = out()
        with console.status(f"starting {shards} shards, a coordinator and {workers} workers"):
            cluster.start()
        _print_cluster(cluster)
        if detach:
            cluster.detach()
            where = "" if state_dir == DEFAULT_STATE_DIR else f" --state-dir {state_dir}"
            console.print(f"running in the background; stop it with `pscluster down{where}`")
            return
        _run_foreground(cluster)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_foreground(cluster: LocalCluster) -> None:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    out().print("cluster is up; press Ctrl-C to stop it")
    try:
        dead = cluster.supervise(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        out().print("stopping the cluster ...")
        cluster.stop()
    if dead is not None:
        raise fail(
            f"{dead.name} exited with code {dead.returncode()}; the cluster was stopped. "
            f"Last lines of {dead.log_path}:\n{dead.log_tail()}"
        )
    out().print("stopped")


def _print_cluster(cluster: LocalCluster) -> None:
    table = Table(title="local pscluster", show_header=True)
    urls = cluster.metrics_urls
    columns = ["process", "pid", "address", "log"] + (["metrics"] if urls else [])
    for column in columns:
        table.add_column(column)
    for h in cluster.handles():
        row = [h.name, str(h.pid), h.address or "", str(h.log_path)]
        table.add_row(*row, *([urls.get(h.name, "")] if urls else []))
    console = out()
    console.print(table)
    console.print(f"coordinator: [bold]{cluster.address}[/]  (PSC_COORDINATOR={cluster.address})")


def down(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    grace: Annotated[
        float, typer.Option(min=0, help="seconds to exit after SIGTERM before SIGKILL")
    ] = 5.0,
) -> None:
    """Stop the local cluster started with `pscluster up --local`."""
    with user_errors():
        stopped = stop_detached(state_dir, grace)
    if not stopped:
        out().print(f"no local cluster is running from {state_dir}")
        return
    out().print(f"stopped {', '.join(stopped)}")


def _speed(straggler: bool, slowdown: float) -> str:
    """A worker's busy time per batch relative to the median of its job's other workers."""
    if straggler:
        return f"[red]straggler {slowdown:.1f}x[/]"
    return f"{slowdown:.1f}x" if slowdown else ""


def _shard_table(st: ClusterStatus, address: str) -> Table:
    """One row per shard: its health, and for registered shards their id, liveness and the
    active jobs they hold."""
    health = {s.address: s for s in st.shards}
    registered = not st.static_shards
    how = "registered" if registered else "PSC_SHARDS"
    table = Table(title=f"shards ({address}, {how})")
    columns = ("id", "address", "live", "health", "jobs", "seen", "error")
    for column in columns if registered else ("address", "health", "jobs", "error"):
        table.add_column(column)
    rows = st.registry or tuple(ShardInfo("", s.address, True, None, ()) for s in st.shards)
    for r in rows:
        h = health.get(r.address)
        healthy = "" if h is None else "[green]healthy[/]" if h.healthy else "[red]down[/]"
        jobs = f"{len(r.jobs)}: {', '.join(r.jobs)}" if r.jobs else "0"
        error = "" if h is None else h.error
        if not registered:
            table.add_row(r.address, healthy, jobs, error)
            continue
        seen = "never" if r.last_seen_age is None else f"{r.last_seen_age:.1f}s ago"
        live = "[green]yes[/]" if r.live else "[red]no[/]"
        table.add_row(r.shard_id, r.address, live, healthy, jobs, seen, error)
    return table


def status(address: Address = None, token: Token = None) -> None:
    """Shards with their health (registered ones with id, liveness and the jobs they hold);
    workers with liveness, task and heartbeat age."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        st = client.status()
        shards = _shard_table(st, client.address)
        workers = Table(title="workers")
        columns = ("worker", "host", "device", "alive", "task", "job", "speed", "heartbeat")
        for column in columns:
            workers.add_column(column)
        for w in st.workers:
            workers.add_row(
                w.worker_id,
                w.host,
                w.device,
                "[green]yes[/]" if w.alive else "[red]no[/]",
                w.task,
                w.job_id,
                _speed(w.straggler, w.slowdown),
                f"{w.last_heartbeat_age:.1f}s ago",
            )
        console = out()
        console.print(shards)
        console.print(workers)
        if not st.static_shards and not any(r.live for r in st.registry):
            err().print(
                "no live shards: jobs are refused until one registers, e.g. "
                f"`PSC_COORDINATOR={client.address} python -m pscluster.server`",
                markup=False,
            )
        if not st.workers:
            err().print(
                "no workers registered: jobs wait until one starts, e.g. "
                f"`pscluster worker --coordinator {client.address}`",
                markup=False,
            )


def scale_shards(
    shards: Annotated[int, typer.Argument(help="How many of the registered shards to use.")],
    timeout: Annotated[
        float, typer.Option(help="Seconds the whole call may take.", min=1.0)
    ] = 120.0,
    address: Address = None,
    token: Token = None,
) -> None:
    """Use SHARDS of the registered shards and move every running job's ranges onto them,
    between two of its steps. To grow, start the shards first (they register with the
    coordinator), e.g. `docker compose up -d --scale ps=3`; to shrink, run this first and
    stop the shards after: it gives up the highest-numbered, those `--scale` removes."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        result = client.scale_shards(shards, timeout=timeout)
        table = Table(title=f"jobs on {len(result.shard_ids)} shard(s)")
        for column in ("job", "moved", "shards", "to a step boundary", "paused", "state", "note"):
            table.add_column(column)
        for m in result.jobs:
            table.add_row(
                m.job_id,
                "[green]yes[/]" if m.moved else "[red]no[/]",
                ", ".join(m.shard_ids),
                f"{m.quiesce_seconds:.2f}s",
                f"{m.pause_seconds:.2f}s",
                f"{m.state_bytes / 1e6:.1f} MB",
                m.reason,
            )
        out().print(f"shards in use: {', '.join(result.shard_ids)}")
        if result.jobs:
            out().print(table)
        else:
            out().print("no running job to move: new jobs go to these shards")
        if any(not m.moved for m in result.jobs):
            raise typer.Exit(1)
