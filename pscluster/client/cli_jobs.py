"""``pscluster submit / watch / jobs / metrics / fetch / cancel``: the SDK from the shell.

The SDK (and with it torch) is imported inside the commands, so that `pscluster down` or
`pscluster --help` answer at once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from pscluster.client.cli_common import Address, Token, err, fail, out, user_errors
from pscluster.client.errors import JobFailed
from pscluster.client.info import JobInfo

if TYPE_CHECKING:
    from pscluster.client.sdk import Job

JobId = Annotated[str, typer.Argument(help="job id, as printed by `pscluster submit`")]
Timeout = Annotated[
    float | None, typer.Option(help="give up after this many seconds (default: wait until done)")
]


def submit(
    spec: Annotated[Path, typer.Argument(help="job file (YAML), e.g. examples/digits.yaml")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until the end")] = False,
    address: Address = None,
    timeout: Timeout = None,
    token: Token = None,
) -> None:
    """Submit the job a YAML file describes; print its id (with --watch: follow it to the end)."""
    from pscluster.client.sdk import Client
    from pscluster.client.spec_file import load_job_file

    with user_errors():
        job_file = load_job_file(spec)
        kwargs = job_file.submit_kwargs()
        with Client(address, token=token) as client:
            job = client.submit(**kwargs)
            _print_token(job)
            if not watch:
                out().print(job.id)
                return
            out().print(f"submitted job [bold]{job.id}[/] ({job_file.name}) to {client.address}")
            _follow(job, timeout, job_file.spec.target_accuracy)


def _print_token(job: Job) -> None:
    """The job's token, once, on stderr (stdout stays the job id, for scripts)."""
    if job.token:
        err().print(
            f"job token (shown once; the cluster keeps no copy): {job.token}\n"
            f"  it reads or cancels job {job.id} only, e.g. "
            f"PSC_TOKEN=<token> pscluster watch {job.id}",
            markup=False,
            soft_wrap=True,
        )


def watch(
    job_id: JobId, address: Address = None, timeout: Timeout = None, token: Token = None
) -> None:
    """Show a job's progress bar until it ends, then its final test accuracy."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        _follow(client.job(job_id), timeout, None)


def _follow(job: Job, timeout: float | None, target: float | None) -> None:
    """Wait with a progress bar; exit 1 if the job fails or ends below ``target`` accuracy."""
    try:
        info = job.wait(progress=True, timeout=timeout, console=out())
    except JobFailed as e:
        raise fail(str(e).replace("[", "\\[")) from None
    accuracy = job.metrics().final_accuracy
    if accuracy is None:
        accuracy = info.test_accuracy
    took = f" in {info.duration:.1f} s" if info.duration is not None else ""
    if accuracy is None:
        out().print(f"job {job.id} completed{took}; it reported no test accuracy")
    else:
        out().print(f"job {job.id} completed{took}: final test accuracy [bold]{accuracy:.4f}[/]")
    if target is not None and (accuracy is None or accuracy < target):
        raise fail(f"final test accuracy {accuracy} is below the target {target}")


def jobs(address: Address = None, token: Token = None) -> None:
    """Every job with its state and progress."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        infos = client.jobs()
    if not infos:
        out().print("no jobs")
        return
    headers = ("id", "name", "state", "mode", "epoch", "progress", "accuracy", "loss")
    rows = [
        (
            i.job_id,
            i.name,
            i.state,
            i.mode,
            f"{min(i.epoch + 1, i.epochs)}/{i.epochs}",
            f"{i.progress:.0%}",
            "-" if i.test_accuracy is None else f"{i.test_accuracy:.4f}",
            "-" if i.last_loss is None else f"{i.last_loss:.4f}",
        )
        for i in infos
    ]
    table = Table(box=box.SIMPLE_HEAD)
    for n, header in enumerate(headers):
        # These columns keep their full width; only the status is cut to fit the terminal
        # (its whole text is in `pscluster watch` and in the SDK's JobInfo).
        width = max(len(header), *(len(row[n]) for row in rows))
        table.add_column(header, no_wrap=True, min_width=width)
    table.add_column("status", no_wrap=True, overflow="ellipsis")
    for info, row in zip(infos, rows, strict=True):
        status = info.error.splitlines()[-1] if info.error else info.status_message
        cells = [escape(c) for c in (*row, status)]
        cells[2] = _state(info)
        table.add_row(*cells)
    out().print(table)


def _state(info: JobInfo) -> str:
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}
    return f"[{colour.get(info.state, 'white')}]{info.state}[/]"


def metrics(
    job_id: JobId,
    address: Address = None,
    token: Token = None,
    as_json: Annotated[bool, typer.Option("--json", help="every metric, as JSON")] = False,
) -> None:
    """A summary of a job's metrics: accuracy per epoch, loss, pushes and staleness."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        m = client.job(job_id).metrics()
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(m), indent=2))
        return
    console = out()
    epochs = Table(title=f"job {job_id}: evaluations")
    for column in ("epoch", "test accuracy", "test loss", "samples"):
        epochs.add_column(column)
    for e in m.epochs:
        epochs.add_row(str(e.epoch), f"{e.test_accuracy:.4f}", f"{e.test_loss:.4f}", str(e.samples))
    console.print(epochs)
    last = m.steps[-1].loss if m.steps else None
    lines = [
        f"steps: {len(m.steps)}" + (f", last loss {last:.4f}" if last is not None else ""),
        f"pushes applied: {m.pushes_applied}, rejected: {m.total_rejected} {m.pushes_rejected}",
        f"pulls: {m.pulls}; bytes pushed {_size(m.bytes_pushed)}, pulled {_size(m.bytes_pulled)}",
        f"staleness (version lag -> pushes): {m.staleness}"
        + (f", mean {m.mean_staleness:.2f}" if m.mean_staleness is not None else "")
        + (f", p99 {m.staleness_percentile(0.99)}" if m.staleness else ""),
        f"clock staleness: {m.clock_staleness}",
        f"steps by worker: {m.pushes_by_worker}",
    ]
    for line in lines:
        console.print(line, markup=False)
    if m.workers:
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
        console.print(speeds)
    if m.events:
        console.print("events:")
        for ev in m.events:
            when = time.strftime("%H:%M:%S", time.localtime(ev.time))
            console.print(f"  {when} {ev.kind}: {ev.message}", markup=False)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def fetch(
    job_id: JobId,
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write")],
    address: Address = None,
    token: Token = None,
) -> None:
    """Save the trained model's state_dict as a safetensors file."""
    from pscluster.client.sdk import Client
    from pscluster.model import state

    with user_errors(), Client(address, token=token) as client:
        tensors = client.job(job_id).fetch_model()
        blob = state.dumps(tensors)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(blob)
    out().print(f"wrote {len(tensors)} tensors ({_size(len(blob))}) to {output}")


def cancel(job_id: JobId, address: Address = None, token: Token = None) -> None:
    """Cancel a job; its workers abandon their leases."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        info = client.job(job_id).cancel()
    out().print(f"job {info.job_id}: {info.state}")
    if info.state != "cancelled":
        err().print(f"the job had already ended ({info.state}); nothing was cancelled")
