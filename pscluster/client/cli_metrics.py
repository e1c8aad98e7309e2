"""``pscluster metrics JOB``: a job's evaluations, pushes, staleness and worker speeds.

What the SDK's :class:`~pscluster.client.metrics.JobMetrics` holds, as tables and lines a
person reads (``--json`` gives every field for a program instead). The SDK (and with it torch)
is imported inside the command, so that `pscluster --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Annotated

import typer
from rich.table import Table

from pscluster.client.cli_common import Address, JobId, Token, format_bytes, out, user_errors
from pscluster.client.metrics import HIGHER_IS_BETTER, JobMetrics, format_metric


def metrics(
    job_id: JobId,
    address: Address = None,
    token: Token = None,
    as_json: Annotated[bool, typer.Option("--json", help="every metric, as JSON")] = False,
) -> None:
    """A summary of a job's metrics: its test metric per epoch, loss, pushes and staleness."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        job = client.job(job_id)
        info = job.info()
        m = job.metrics().of_job(info)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(m), indent=2))
        return
    console = out()
    better = "higher" if m.metric in HIGHER_IS_BETTER else "lower"
    console.print(f"job {job_id}, evaluations on the test set ({m.metric}: {better} is better)")
    console.print(_evaluations(m))
    for line in _summary(m, info.mode):
        console.print(line, markup=False)
    if m.workers:
        console.print(_speeds(m))
    if m.tables:
        console.print(_tables(m))
    if m.events:
        console.print("events:")
        for ev in m.events:
            when = time.strftime("%H:%M:%S", time.localtime(ev.unix_time))
            console.print(f"  {when} (+{ev.seconds:.1f} s) {ev.kind}: {ev.message}", markup=False)


def _evaluations(m: JobMetrics) -> Table:
    """One row per evaluation on the test set, a column for each metric it measured."""
    table = Table()
    names = m.metric_names
    for column in ("epoch", "seconds", *(f"test {n}" for n in names), "samples"):
        table.add_column(column, no_wrap=True)
    for e in m.epochs:
        values = [format_metric(n, e.metrics[n]) if n in e.metrics else "-" for n in names]
        table.add_row(str(e.epoch), f"{e.seconds:.1f}", *values, str(e.samples))
    return table


def _summary(m: JobMetrics, mode: str) -> list[str]:
    last = m.steps[-1].loss if m.steps else None
    rejected = ", ".join(f"{why} {n}" for why, n in sorted(m.pushes_rejected.items()))
    lines = [
        f"steps: {len(m.steps)}" + (f", last training loss {last:.4f}" if last is not None else ""),
        f"pushes applied: {m.pushes_applied}, rejected: {m.total_rejected}"
        + (f" ({rejected})" if rejected else ""),
        f"pulls: {m.pulls}; bytes pushed {format_bytes(m.bytes_pushed)}, "
        f"pulled {format_bytes(m.bytes_pulled)}",
        "staleness (updates since the pull: pushes): "
        + _histogram(m.staleness)
        + (f"; mean {m.mean_staleness:.2f}" if m.mean_staleness is not None else "")
        + (f", p99 {m.staleness_percentile(0.99)}" if m.staleness else ""),
    ]
    if m.batches_dropped:
        dropped = ", ".join(f"{why} {n}" for why, n in sorted(m.batches_dropped.items()))
        lines.append(f"batches dropped (trained on nothing): {dropped}")
    # Imported here: the consistency policies load torch, which `pscluster --help` need not.
    from pscluster.server.consistency import clock_bound

    if clock_bound(mode):
        lines.append(
            "clock staleness (lead over the slowest worker: pushes): "
            + _histogram(m.clock_staleness)
        )
    steps = ", ".join(f"{w} {n}" for w, n in sorted(m.pushes_by_worker.items()))
    lines.append(f"steps by worker: {steps or 'none yet'}")
    phases = m.phases_per_step()
    if phases:
        total = sum(phases.values())
        parts = ", ".join(f"{n} {1000 * s:.1f}" for n, s in phases.items())
        lines.append(f"time per step, by phase (ms): {parts}; total {1000 * total:.1f}")
    return lines


def _histogram(counts: dict[int, int]) -> str:
    return ", ".join(f"{lag}: {n}" for lag, n in sorted(counts.items())) or "none yet"


def _tables(m: JobMetrics) -> Table:
    """Each embedding table: its rows and their spread over shards, traffic per step, hot ids."""
    steps = max(1, len(m.steps))
    table = Table(title="embedding tables on the shards (per step: over the job's steps)")
    for column in ("table", "rows", "memory", "imbalance", "rows/step", "bytes/step", "hot ids"):
        table.add_column(column)
    for t in m.tables:
        rows = f"{t.rows}"
        if t.admitted or t.evicted:
            rows += f" (+{t.admitted} -{t.evicted})"
        traffic = (t.bytes_looked_up + t.bytes_pushed) / steps
        table.add_row(
            t.name,
            rows,
            format_bytes(t.bytes),
            f"{t.imbalance:.2f}",
            f"{t.rows_looked_up / steps:.0f} looked up, {t.rows_pushed / steps:.0f} pushed",
            format_bytes(int(traffic)),
            ", ".join(f"{i} ({n})" for i, n in t.hot_ids[:3]),
        )
    return table


def _speeds(m: JobMetrics) -> Table:
    speeds = Table(title="workers (busy per batch; straggler: > factor x the median)")
    for column in ("worker", "busy", "wall", "batches", "vs median", "flag"):
        speeds.add_column(column)
    for w in m.workers:
        flag = "straggler" if w.straggler else ""
        if w.excluded:
            flag += " (excluded from ssp clock)"
        speeds.add_row(
            w.worker,
            f"{w.busy_seconds * 1000:.1f} ms",
            f"{w.step_seconds * 1000:.1f} ms",
            str(w.batches),
            f"{w.slowdown:.2f}x" if w.slowdown else "",
            flag,
        )
    return speeds
