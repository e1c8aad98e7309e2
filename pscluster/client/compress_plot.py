"""A compression report drawn: the job's test metric against size on disk, one point per
variant, and latency beside it (``pscluster plot REPORT.json -o size.png``).

The size axis is logarithmic: variants differ by factors (int8 is ~4x smaller, structured
pruning and int8 together ~10x), and equal factors should look equally far apart.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pscluster.model_compression.report import CompressionReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw(report: CompressionReport, output: Path, pyplot: ModuleType) -> None:
    """Two panels: the metric against size on disk, and against latency per batch (both on
    log axes); one marker per variant, named in the legend."""
    fig, (by_size, by_time) = pyplot.subplots(1, 2, figsize=(13, 5))
    try:
        fig.suptitle(
            f"{report.source}: test {report.metric_name} of each variant "
            f"({report.test_rows} test rows)"
        )
        sizes = [v.size_bytes / 1e6 for v in report.variants]
        times = [v.latency_ms for v in report.variants]
        _panel(by_size, report, sizes, "size on disk (MB)")
        _panel(
            by_time,
            report,
            times,
            f"CPU ms per {report.batch_rows}-row batch ({report.threads} thread(s), median)",
        )
        by_time.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    finally:
        pyplot.close(fig)


def _panel(ax: Axes, report: CompressionReport, xs: list[float], label: str) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for i, (v, x) in enumerate(zip(report.variants, xs, strict=True)):
        ax.scatter(
            [x], [v.metric], s=60, marker=_MARKERS[i % len(_MARKERS)], label=v.name, zorder=3
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{label}, log scale")
    ax.set_ylabel(f"test {report.metric_name}")
    ax.grid(True, alpha=0.3)


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
