"""Figures of the benchmarks, drawn with matplotlib's Agg backend (no display needed).

Each function takes the ``results`` a bench script also writes to JSON, so a figure can be
redrawn from a saved run: ``python bench/plots.py compression bench/results/compression.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

Results = dict[str, dict[str, dict[str, Any]]]


def compression(results: Results, path: Path) -> None:
    """Per model, one row of two panels: final test accuracy and MB pushed, per codec."""
    models = list(results)
    fig, axes = plt.subplots(
        len(models), 2, figsize=(11, 3.2 * len(models)), squeeze=False, constrained_layout=True
    )
    for row, model in zip(axes, models, strict=True):
        rows = results[model]
        labels = list(rows)
        accuracy = [rows[c]["accuracy"] for c in labels]
        pushed = [rows[c]["bytes_pushed"] / 1e6 for c in labels]
        params = next(iter(rows.values()))["num_params"] / 1e6
        colors = [f"C{i}" for i in range(len(labels))]
        acc_ax, mb_ax = row
        acc_ax.barh(labels, accuracy, color=colors)
        if "none" in rows:
            acc_ax.axvline(rows["none"]["accuracy"], color="k", lw=0.8, ls="--")
            acc_ax.axvline(rows["none"]["accuracy"] - 0.01, color="grey", lw=0.8, ls=":")
        low = min(accuracy)
        acc_ax.set_xlim(max(0.0, min(low - 0.02, 0.9)), 1.0)
        acc_ax.set_title(f"{model} ({params:.2f}M params): final test accuracy")
        acc_ax.invert_yaxis()
        for y, a in enumerate(accuracy):
            acc_ax.text(a, y, f" {a:.3f}", va="center", fontsize=8)
        mb_ax.barh(labels, pushed, color=colors, log=True)
        mb_ax.set_title(f"{model}: MB pushed (log scale)")
        mb_ax.invert_yaxis()
        mb_ax.set_yticklabels([])
        for y, (mb, c) in enumerate(zip(pushed, labels, strict=True)):
            ratio = rows[c]["ratio"]
            mb_ax.text(mb, y, f" {mb:.1f} MB ({ratio:.1f}x)", va="center", fontsize=8)
        mb_ax.set_xlim(min(pushed) / 2, max(pushed) * 8)
    fig.suptitle("Gradient compression (dashed: none; dotted: none - 1 point)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def staleness(
    runs: list[dict[str, Any]], target: float, path: Path, title: str = "SSP staleness bound s"
) -> None:
    """Four panels: test accuracy against time, time to ``target``, samples/s and version
    staleness, one colour per setting.

    ``runs`` are the sweep's rows: ``label``, ``curve`` (a list of [seconds since the job's
    start, accuracy], one per epoch), ``time_to_target`` (None if never reached),
    ``samples_per_s``, ``staleness_mean`` and ``staleness_p99``; repeats share a label. Curves
    are averaged over repeats epoch by epoch (mean time, mean accuracy); bars are means with
    the repeats' range as error bars.
    """
    labels = list(dict.fromkeys(r["label"] for r in runs))
    colors = [f"C{i}" for i in range(len(labels))]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), constrained_layout=True)
    curve_ax, ttt_ax, rate_ax, stale_ax = axes.flat
    for label, color in zip(labels, colors, strict=True):
        curves = [r["curve"] for r in runs if r["label"] == label]
        n = min(len(c) for c in curves)
        xs = [sum(c[i][0] for c in curves) / len(curves) for i in range(n)]
        ys = [sum(c[i][1] for c in curves) / len(curves) for i in range(n)]
        curve_ax.plot(xs, ys, marker=".", color=color, label=label)
    curve_ax.axhline(target, color="grey", lw=0.8, ls=":")
    curve_ax.set_xlabel("seconds since the job started")
    curve_ax.set_ylabel("test accuracy (per epoch)")
    curve_ax.set_ylim(0.8, 1.0)
    curve_ax.legend(fontsize=8)
    curve_ax.set_title("accuracy against wall time (mean of repeats)")

    def bars(ax: Any, key: str, ylabel: str, fmt: str) -> None:
        means, lows, highs = [], [], []
        for label in labels:
            got = [r[key] for r in runs if r["label"] == label and r[key] is not None]
            m = sum(got) / len(got) if got else 0.0
            means.append(m)
            lows.append(m - min(got) if got else 0.0)
            highs.append(max(got) - m if got else 0.0)
        x = list(range(len(labels)))
        ax.bar(x, means, color=colors, yerr=[lows, highs], capsize=3)
        for i, (m, high) in enumerate(zip(means, highs, strict=True)):
            ax.text(i, m + high, fmt.format(m), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels, rotation=20, fontsize=8)
        ax.set_ylabel(ylabel)

    bars(ttt_ax, "time_to_target", "seconds", "{:.1f}")
    ttt_ax.set_title(f"time to {target:.2f} test accuracy (range of repeats)")
    bars(rate_ax, "samples_per_s", "training samples/s", "{:.0f}")
    rate_ax.set_title("throughput")
    x = list(range(len(labels)))
    mean = [
        sum(r["staleness_mean"] for r in runs if r["label"] == lb)
        / sum(1 for r in runs if r["label"] == lb)
        for lb in labels
    ]
    p99 = [max(r["staleness_p99"] or 0 for r in runs if r["label"] == lb) for lb in labels]
    stale_ax.bar([i - 0.2 for i in x], mean, width=0.4, color="C0", label="mean")
    stale_ax.bar([i + 0.2 for i in x], p99, width=0.4, color="C1", label="p99 (max of repeats)")
    stale_ax.set_xticks(x, labels, rotation=20, fontsize=8)
    stale_ax.set_ylabel("updates between pull and push")
    stale_ax.legend(fontsize=8)
    stale_ax.set_title("version staleness of applied pushes")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("compression", "staleness"):
        sys.exit("usage: python bench/plots.py compression|staleness RESULTS.json")
    path = Path(sys.argv[2])
    data = json.loads(path.read_text())
    if sys.argv[1] == "compression":
        compression(data["results"], path.with_suffix(".png"))
    else:
        staleness(data["runs"], data["target"], path.with_suffix(".png"), data.get("title", ""))
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
