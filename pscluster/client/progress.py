"""Following a job until it ends, optionally with a rich progress bar.

The coordinator keeps its state on disk and may restart under a running job, so a short
spell of "cannot reach the coordinator" while waiting is shown and retried rather than fatal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from pscluster.client.errors import ClusterUnavailableError
from pscluster.client.info import JobInfo
from pscluster.client.metrics import format_metric, metric_label

# How long the coordinator may stay unreachable while a job is followed before giving up.
UNREACHABLE_GRACE_SECONDS = 30.0


def describe(info: JobInfo) -> str:
    """One line of what matters while training: epoch, training loss, the job's metric at the
    latest evaluation ("acc 0.953", "mse 0.0312"), what it waits on. A predict job: what it is
    doing (partitions scored, workers)."""
    if info.kind == "predict":
        return "" if info.done else info.status_message.removeprefix("running: ")
    parts = [f"epoch {min(info.epoch + 1, info.epochs)}/{info.epochs}" if info.epochs else ""]
    if info.last_loss is not None:
        parts.append(f"loss {info.last_loss:.4f}")
    if info.metric_value is not None:
        value = format_metric(info.metric, info.metric_value, digits=3)
        parts.append(f"{metric_label(info.metric)} {value}")
    if info.status_message and not info.done:
        parts.append(info.status_message)
    return "  ".join(p for p in parts if p)


def follow(
    get_info: Callable[[], JobInfo],
    *,
    progress: bool,
    timeout: float | None,
    poll: float,
    console: Console | None = None,
) -> JobInfo:
    """Poll ``get_info`` every ``poll`` seconds until the job is done; return the last info.

    Raises TimeoutError once ``timeout`` seconds have passed with the job still running, and
    ClusterUnavailableError if the coordinator stays unreachable for longer than the grace.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(
        TextColumn("[bold]{task.fields[job]}[/bold] {task.fields[state]}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not progress,
        transient=False,
    )
    unreachable_since: float | None = None
    with bar:
        task = bar.add_task("", total=1.0, job="", state="")
        while True:
            try:
                info = get_info()
                unreachable_since = None
            except ClusterUnavailableError:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_GRACE_SECONDS:
                    raise
                bar.update(task, description="coordinator unreachable, retrying")
            else:
                bar.update(
                    task,
                    completed=1.0 if info.state == "completed" else info.progress,
                    description=describe(info),
                    job=info.name or info.job_id,
                    state=info.state,
                )
                if info.done:
                    return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job still running after {timeout:g} s")
            sleep = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            time.sleep(sleep)
