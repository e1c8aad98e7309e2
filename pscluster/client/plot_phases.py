"""``pscluster plot``'s two panels of where the step time goes (pscluster.worker.phases).

Over time: the workers' mean milliseconds per step in each phase, stacked, so a change of
mode, codec or overlap shows as a band growing or shrinking. Per worker: the same over the
whole job, a stacked bar each, so a straggler's extra time shows in the phase it is in (its
own compute, or waiting for the others).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pscluster.client.history import History, PhaseSample

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PHASES = ("pull", "wait", "forward", "backward", "push", "other")
COLORS = {
    "pull": "tab:blue",
    "wait": "tab:grey",
    "forward": "tab:green",
    "backward": "tab:olive",
    "push": "tab:red",
    "other": "tab:brown",
}


def phases_over_time(ax: Axes, h: History) -> None:
    ax.set_title("time per step, by phase (stacked)")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("ms per step")
    if not h.phases:
        _nothing_yet(ax)
        return
    samples = sorted(h.phases, key=lambda p: p.seconds)
    seconds = [p.seconds for p in samples]
    stacks = [[1000 * getattr(p, name) for p in samples] for name in PHASES]
    ax.stackplot(seconds, stacks, labels=PHASES, colors=[COLORS[n] for n in PHASES], alpha=0.8)
    ax.legend(loc="upper right", fontsize="small", ncols=3)


def phases_by_worker(ax: Axes, h: History) -> None:
    ax.set_title("mean time per step, by worker and phase")
    ax.set_ylabel("ms per step")
    workers = sorted({p.worker for p in h.phases})
    if not workers:
        _nothing_yet(ax)
        return
    means = {w: _mean([p for p in h.phases if p.worker == w]) for w in workers}
    bottom = [0.0] * len(workers)
    for name in PHASES:
        heights = [1000 * means[w][name] for w in workers]
        ax.bar(workers, heights, bottom=bottom, color=COLORS[name], label=name)
        bottom = [b + v for b, v in zip(bottom, heights, strict=True)]
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(loc="upper right", fontsize="small", ncols=3)


def _nothing_yet(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no phase timings reported", ha="center", va="center",
            transform=ax.transAxes, color="grey")  # fmt: skip


def _mean(samples: list[PhaseSample]) -> dict[str, float]:
    """Seconds per step in each phase, weighted by the batches of each sample."""
    batches = sum(p.batches for p in samples) or 1
    return {n: sum(getattr(p, n) * p.batches for p in samples) / batches for n in PHASES}
