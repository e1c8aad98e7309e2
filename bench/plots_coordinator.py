"""The figure of bench/coordinator_scale.py (matplotlib, Agg backend), redrawn from a saved
run with ``python bench/plots_coordinator.py bench/results/coordinator_scale.json``.

Six panels against the number of simulated workers, one line per tree (before / after) and
the issue's reported figures dashed: lease operations/s, AcquireTask p99, heartbeats refused,
workers declared dead while heartbeating, coordinator CPU; and leases/s over time at the
largest worker count (the coordinator's kill marked when there was one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

Rows = list[dict[str, Any]]
# Each panel: title, how to read a row's value, log scale, the issue's column (None: none).
PANELS: list[tuple[str, Any, bool, str | None]] = [
    ("lease operations / s", lambda r: r["figures"]["leases_per_s"], False, "leases_per_s"),
    (
        "AcquireTask p99 (ms, held time out)",
        lambda r: r["figures"]["acquire_lease"]["p99_ms"],
        True,
        "acquire_p99_ms",
    ),
    (
        "heartbeats refused (%)",
        lambda r: r["figures"]["heartbeats_refused_pct"],
        False,
        "heartbeats_refused_pct",
    ),
    (
        "workers declared dead while heartbeating",
        lambda r: r["figures"]["false_death_workers"],
        False,
        "false_death_workers",
    ),
    ("coordinator CPU (% of one core)", lambda r: r["cpu"]["coordinator_pct"], False, None),
]


def scale(rows: Rows, issue: Rows, path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), constrained_layout=True)
    trees = list(dict.fromkeys(r["tree"] for r in rows))
    for ax, (title, value, log, column) in zip(axes.flat, PANELS, strict=False):
        for k, tree in enumerate(trees):
            mine = sorted((r for r in rows if r["tree"] == tree), key=lambda r: r["workers"])
            xs = [r["workers"] for r in mine]
            ys = [value(r) or 0.0 for r in mine]
            ax.plot(xs, ys, marker="o", color=f"C{k}", label=tree)
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(
                    f"{y:.0f}", (x, y), fontsize=7, textcoords="offset points", xytext=(0, 4)
                )
        if column is not None and issue:
            ax.plot(
                [r["workers"] for r in issue],
                [r[column] for r in issue],
                ls="--",
                color="grey",
                marker="x",
                label="issue (reported)",
            )
        if column == "acquire_p99_ms":
            ax.axhline(100, color="k", lw=0.8, ls=":", label="target at 500: 100 ms")
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("simulated workers")
        ax.legend(fontsize=7)
    over_time(axes.flat[5], rows)
    fig.suptitle("Coordinator at scale: simulated workers over real gRPC, 2 shards")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def over_time(ax: Any, rows: Rows) -> None:
    """Leases acknowledged per second at the largest worker count, per tree."""
    largest = max((r["workers"] for r in rows), default=0)
    for k, r in enumerate(x for x in rows if x["workers"] == largest):
        s = r["series"]
        ys = s["leases"]
        ax.plot([i - s["t0_s"] for i in range(len(ys))], ys, color=f"C{k}", lw=0.8, label=r["tree"])
        if r.get("kill"):
            ax.axvline(r["kill"]["at_s"], color=f"C{k}", ls=":", lw=0.8)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_title(f"leases / s over time at {largest} workers (0: window starts)", fontsize=10)
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/plots_coordinator.py RESULTS.json")
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    scale(data["rows"], data["issue"], path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
