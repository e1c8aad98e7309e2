"""``pscluster submit / watch / jobs / fetch / cancel``: the SDK from the shell (``pscluster
metrics`` is :mod:`pscluster.client.cli_metrics`).

The SDK (and with it torch) is imported inside the commands, so that `pscluster down` or
`pscluster --help` answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pscluster.client.cli_common import (
    Address,
    JobId,
    Token,
    err,
    fail,
    format_bytes,
    out,
    user_errors,
)
from pscluster.client.errors import JobFailed
from pscluster.client.info import JobInfo
from pscluster.client.metrics import ACCURACY, format_metric, metric_label
from pscluster.model.names import LOWER_IS_BETTER

if TYPE_CHECKING:
    from pscluster.client.sdk import Job

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
            if "teacher" in kwargs:  # a distill: section: the model is the student
                job = client.distill(student=kwargs.pop("model"), **kwargs)
            else:
                job = client.submit(**kwargs)
            _print_token(job)
            if not watch:
                out().print(job.id)
                return
            out().print(f"submitted job [bold]{job.id}[/] ({job_file.name}) to {client.address}")
            _follow(job, timeout, job_file.spec.target_accuracy, job_file.spec.target_metric)


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
    """Show a job's progress bar until it ends, then its final test metric (accuracy, mse, ...)."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        _follow(client.job(job_id), timeout, None)


def _follow(
    job: Job, timeout: float | None, target: float | None, target_metric: float | None = None
) -> None:
    """Wait with a progress bar, then print the job's final test metric; exit 1 if the job
    fails, if it measures accuracy and ends below ``target``, or if its metric ends on the
    wrong side of ``target_metric`` (above it for mse, mae and loss; below it for accuracy)."""
    try:
        info = job.wait(progress=True, timeout=timeout, console=out())
    except JobFailed as e:
        raise fail(str(e).replace("[", "\\[")) from None
    if info.kind == "predict":
        out().print(f"job {job.id} {info.status_message}", markup=False)
        return
    metrics = job.metrics().of_job(info)
    metric, value = metrics.metric, metrics.final_metric
    if value is None and metric == info.metric:
        value = info.metric_value
    took = f" in {info.duration:.1f} s" if info.duration is not None else ""
    if value is None:
        out().print(f"job {job.id} completed{took}; it reported no evaluation on the test set")
    else:
        shown = format_metric(metric, value)
        out().print(f"job {job.id} completed{took}: final test {metric} [bold]{shown}[/]")
    if target_metric is not None:
        _check_metric_target(metric, value, target_metric)
    if target is None:
        return
    if metric != ACCURACY:
        err().print(
            f"target_accuracy {target} was not checked: this job measures {metric}, not "
            "accuracy; remove target_accuracy from its job file",
            markup=False,
        )
    elif value is None:
        raise fail(f"the job reported no test accuracy to compare with the target {target}")
    elif value < target:
        raise fail(f"final test accuracy {value:.4f} is below the target {target}")


def _check_metric_target(metric: str, value: float | None, target: float) -> None:
    if value is None:
        raise fail(f"the job reported no test {metric} to compare with the target {target}")
    lower_is_better = metric in LOWER_IS_BETTER
    missed = value > target if lower_is_better else value < target
    if missed:
        side = "above" if lower_is_better else "below"
        raise fail(f"final test {metric} {value:.4f} is {side} the target {target}")


def jobs(address: Address = None, token: Token = None) -> None:
    """Every job with its state, progress, latest test metric, training loss and status."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        infos = client.jobs()
    if not infos:
        out().print("no jobs")
        return
    console = out()
    console.print(jobs_view(infos, console.width))


# `pscluster jobs` headers: short, so that every column fits in 80 (a pipe's width with no
# COLUMNS set); "test" is the job's metric at its latest evaluation, "loss" the training loss.
JOB_COLUMNS = ("id", "name", "state", "mode", "epoch", "done", "test", "loss")
# Narrower than this, a status column says too little: the statuses go under the table.
STATUS_MIN_WIDTH = 24
_STATE_COLOURS = {"completed": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}


def jobs_view(infos: list[JobInfo], width: int) -> RenderableType:
    """`pscluster jobs` at ``width`` columns: a table with every column, the statuses in its
    last column when they fit there, else listed under it in full.

    Rich drops whole columns when those it cannot shrink do not fit, which is how narrow
    terminals and pipes lost columns: here only the name (which folds) and the status (cut
    with an ellipsis) can shrink, and the short columns never wrap.
    """
    rows = [_cells(i) for i in infos]
    needed = sum(max(len(h), *(len(r[n]) for r in rows)) + 2 for n, h in enumerate(JOB_COLUMNS))
    beside = width - needed >= STATUS_MIN_WIDTH
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    for header in JOB_COLUMNS:
        table.add_column(
            header, **({"overflow": "fold"} if header == "name" else {"no_wrap": True})
        )
    if beside:
        table.add_column("status")  # shrinkable: its cells are single lines, cut to fit
    for info, row in zip(infos, rows, strict=True):
        cells: list[RenderableType] = [Text(c) for c in row]
        cells[2] = Text(info.state, style=_STATE_COLOURS.get(info.state, ""))
        if beside:
            cells.append(Text(_status(info), no_wrap=True, overflow="ellipsis"))
        table.add_row(*cells)
    if beside:
        return table
    statuses = [Text(f"{i.job_id}  {_status(i)}") for i in infos if _status(i)]
    return Group(table, Text("status", style="bold"), *statuses) if statuses else table


def _cells(i: JobInfo) -> tuple[str, ...]:
    test = "-"
    if i.metric_value is not None:
        test = f"{metric_label(i.metric)} {format_metric(i.metric, i.metric_value, 3)}"
    loss = "-" if i.last_loss is None else f"{i.last_loss:.4f}"
    epoch = f"{min(i.epoch + 1, i.epochs)}/{i.epochs}"
    mode = i.mode or i.kind  # a predict job has no consistency mode: its kind shows
    return (i.job_id, i.name, i.state, mode, epoch, f"{i.progress:.0%}", test, loss)


def _status(info: JobInfo) -> str:
    """The last line of the error, else the status without the state the table already shows."""
    if info.error.strip():
        return info.error.strip().splitlines()[-1]
    return info.status_message.removeprefix(f"{info.state}: ")


def fetch(
    job_id: JobId,
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write")],
    address: Address = None,
    token: Token = None,
) -> None:
    """Save the trained model's state_dict as a safetensors file (streamed to disk as it
    arrives: a model with large embedding tables is never held in memory)."""
    from safetensors import safe_open

    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        output.parent.mkdir(parents=True, exist_ok=True)
        client.job(job_id).save_model(output)
    with safe_open(str(output), framework="pt") as f:
        count = len(list(f.keys()))
    size = format_bytes(output.stat().st_size)
    out().print(f"wrote {count} tensors ({size}) to {output}")


def cancel(job_id: JobId, address: Address = None, token: Token = None) -> None:
    """Cancel a job; its workers abandon their leases."""
    from pscluster.client.sdk import Client

    with user_errors(), Client(address, token=token) as client:
        info = client.job(job_id).cancel()
    out().print(f"job {info.job_id}: {info.state}")
    if info.state != "cancelled":
        err().print(f"the job had already ended ({info.state}); nothing was cancelled")
