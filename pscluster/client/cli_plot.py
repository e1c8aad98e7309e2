"""``pscluster plot JOB -o curves.png``: a job's training curves in one figure.

Six panels: training loss per step, training loss and the job's test metric over time, that
metric and the test loss per epoch, the staleness histograms of the applied pushes (version
staleness, and in ssp the clock staleness beside it), and where the step time goes: by phase
over time, and per worker (pscluster.client.plot_phases). The test metric is what the job
evaluates: accuracy for a classifier (higher is better, on a 0..1 axis), mse or mae for a
regression, the loss alone for a custom loss (lower is better); its axis label says which.
The data is :meth:`Job.history`, which ``--csv`` also writes out.

matplotlib is imported on use, with the Agg backend (no display needed): it is an optional
dependency, and `pscluster --help` should not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from pscluster.client.cli_common import Address, Token, out, user_errors
from pscluster.client.errors import PSClusterError
from pscluster.client.metrics import ACCURACY, HIGHER_IS_BETTER, LOSS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from pscluster.client.history import History

# What savefig writes without extra software; anything else is refused before any RPC.
FORMATS = (".png", ".svg", ".pdf")
# Steps are many and noisy (one per batch, interleaved across workers): a moving average over
# a twentieth of them (at most this many) shows the trend; the raw points stay as faint dots.
MAX_SMOOTHING = 50


def plot(
    job_id: Annotated[
        str,
        typer.Argument(
            help="job id, as printed by `pscluster submit`; or a report .json of "
            "`pscluster compress` (accuracy against size)"
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="image to write: .png, .svg or .pdf")
    ],
    csv_dir: Annotated[
        Path | None,
        typer.Option("--csv", help="also write steps.csv, epochs.csv, staleness.csv here"),
    ] = None,
    address: Address = None,
    token: Token = None,
) -> None:
    """Plot a job's loss and test metric (accuracy, mse, ...) over steps, epochs and time,
    and its staleness."""
    from pscluster.client.sdk import Client

    with user_errors():
        if output.suffix.lower() not in FORMATS:
            raise ValueError(
                f"cannot write {output}: the file name must end in one of {', '.join(FORMATS)}"
            )
        pyplot = _pyplot()  # before any RPC: a missing matplotlib is the first thing to fix
        if job_id.endswith(".json"):
            _compression(Path(job_id), output, pyplot)
            return
        with Client(address, token=token) as client:
            history = client.job(job_id).history()
        output.parent.mkdir(parents=True, exist_ok=True)
        draw(history, output, pyplot)
        written = [output]
        if csv_dir is not None:
            written += history.to_csv(csv_dir)
    summary = f"{len(history.steps)} steps, {len(history.epochs)} evaluations"
    out().print(f"job {job_id} ({history.state}, {summary}): wrote", markup=False)
    for path in written:
        out().print(f"  {path}", markup=False)


def _compression(report: Path, output: Path, pyplot: ModuleType) -> None:
    """A compression report (``pscluster compress``): the metric against size and latency."""
    from pscluster.client import compress_plot
    from pscluster.model_compression.report import CompressionReport

    loaded = CompressionReport.load(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    compress_plot.draw(loaded, output, pyplot)
    out().print(f"{report} ({len(loaded.variants)} variants): wrote {output}", markup=False)


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend, or a PSClusterError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PSClusterError(
            "`pscluster plot` needs matplotlib, which is not installed: "
            "pip install 'matplotlib>=3.8' (or pip install 'pscluster[plot]')"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(history: History, output: Path, pyplot: ModuleType | None = None) -> None:
    """Draw the six panels of ``history`` into ``output`` (format from its suffix)."""
    from pscluster.client.plot_phases import phases_by_worker, phases_over_time

    plt = pyplot if pyplot is not None else _pyplot()
    fig, axes = plt.subplots(3, 2, figsize=(12, 12.5))
    try:
        fig.suptitle(
            f"job {history.job_id} ({history.mode}, {history.state}): "
            f"{len(history.steps)} steps, {len(history.epochs)}/{history.epochs_planned} epochs"
        )
        _loss_by_step(axes[0][0], history)
        _over_time(axes[0][1], history)
        _by_epoch(axes[1][0], history)
        _staleness(axes[1][1], history)
        phases_over_time(axes[2][0], history)
        phases_by_worker(axes[2][1], history)
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    finally:
        plt.close(fig)


def _loss_by_step(ax: Axes, h: History) -> None:
    ax.set_title("training loss per step")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if not h.steps:
        _empty(ax, "no steps reported yet")
        return
    steps = [s.step for s in h.steps]
    losses = [s.loss for s in h.steps]
    window = _window(len(losses))
    if window == 1:
        ax.plot(steps, losses, ".-", color="tab:blue")
        return
    ax.plot(steps, losses, ".", markersize=2, alpha=0.3, color="tab:blue", label="batch")
    ax.plot(steps, _smooth(losses, window), color="tab:blue", label=f"mean of {window} steps")
    ax.legend(loc="upper right")


def _over_time(ax: Axes, h: History) -> None:
    ax.set_title(f"loss and test {h.metric} over time")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("training loss", color="tab:blue")
    if not h.steps and not h.epochs:
        _empty(ax, "nothing reported yet")
        return
    if h.steps:
        ordered = sorted(h.steps, key=lambda s: s.seconds)
        seconds = [s.seconds for s in ordered]
        losses = _smooth([s.loss for s in ordered], _window(len(ordered)))
        ax.plot(seconds, losses, color="tab:blue")
    test = ax.twinx()
    _metric_axis(test, h.metric)
    if h.epochs:
        test.plot([e.seconds for e in h.epochs], h.metric_values(), "o-", color="tab:green")


def _by_epoch(ax: Axes, h: History) -> None:
    ax.set_title("test set after each epoch")
    ax.set_xlabel("epoch")
    _metric_axis(ax, h.metric)
    if not h.epochs:
        _empty(ax, "no evaluation yet")
        return
    epochs = [e.epoch for e in h.epochs]
    ax.plot(epochs, h.metric_values(), "o-", color="tab:green")
    _integer_ticks(ax)
    if h.metric == LOSS:
        return  # the job's metric is the test loss itself: a second axis would repeat it
    loss = ax.twinx()
    loss.set_ylabel("test loss (lower is better)", color="tab:red")
    loss.plot(epochs, h.metric_values(LOSS), "s--", color="tab:red")


def _metric_axis(ax: Axes, metric: str) -> None:
    """Label an axis with the job's metric and which way is better; accuracy spans 0..1."""
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    ax.set_ylabel(f"test {metric} ({better} is better)", color="tab:green")
    if metric == ACCURACY:
        ax.set_ylim(0, 1.02)


def _staleness(ax: Axes, h: History) -> None:
    ax.set_title(f"staleness of the {h.pushes_applied} applied pushes")
    ax.set_xlabel("staleness")
    ax.set_ylabel("pushes")
    version, clock = h.histogram("version"), h.histogram("clock")
    # Every push of a mode with a clock bound (ssp) has a clock staleness; other modes record 0
    # for all, which says nothing. (Imported here: the policies load torch, `--help` need not.)
    from pscluster.server.consistency import clock_bound

    show_clock = clock_bound(h.mode) and bool(clock)
    if not version and not show_clock:
        _empty(ax, "no push applied yet")
        return
    width = 0.4 if show_clock else 0.8
    ax.bar(
        [lag - (width / 2 if show_clock else 0) for lag in version],
        list(version.values()),
        width=width,
        color="tab:purple",
        label="version (updates since the pull)",
    )
    if show_clock:
        ax.bar(
            [lag + width / 2 for lag in clock],
            list(clock.values()),
            width=width,
            color="tab:orange",
            label="clock (lead over the slowest worker)",
        )
    _integer_ticks(ax)
    ax.legend(loc="best")


def _window(n: int) -> int:
    return max(1, min(MAX_SMOOTHING, n // 20))


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points; the first average what there is."""
    total, smoothed = 0.0, []
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        smoothed.append(total / min(i + 1, window))
    return smoothed


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator  # matplotlib is imported by now

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
