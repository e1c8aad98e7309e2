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
    _mean_curves(curve_ax, runs, labels, colors, target)
    _bars_of_repeats(ttt_ax, runs, labels, colors, "time_to_target", "seconds", "{:.1f}")
    ttt_ax.set_title(f"time to {target:.2f} test accuracy (range of repeats)")
    _bars_of_repeats(rate_ax, runs, labels, colors, "samples_per_s", "training samples/s", "{:.0f}")
    rate_ax.set_title("throughput")
    _staleness_bars(stale_ax, runs, labels)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_curves(
    ax: Any, runs: list[dict[str, Any]], labels: list[str], colors: list[str], target: float
) -> None:
    """Accuracy against time per label, averaged over its repeats epoch by epoch."""
    for label, color in zip(labels, colors, strict=True):
        curves = [r["curve"] for r in runs if r["label"] == label]
        n = min(len(c) for c in curves)
        xs = [sum(c[i][0] for c in curves) / len(curves) for i in range(n)]
        ys = [sum(c[i][1] for c in curves) / len(curves) for i in range(n)]
        ax.plot(xs, ys, marker=".", color=color, label=label)
    ax.axhline(target, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("test accuracy (per epoch)")
    ax.set_ylim(0.8, 1.0)
    ax.legend(fontsize=8)
    ax.set_title("accuracy against wall time (mean of repeats)")


def _bars_of_repeats(
    ax: Any,
    runs: list[dict[str, Any]],
    labels: list[str],
    colors: list[str],
    key: str,
    ylabel: str,
    fmt: str,
) -> None:
    """One bar per label: the mean of ``key`` over its repeats, their range as error bars."""
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


def _staleness_bars(ax: Any, runs: list[dict[str, Any]], labels: list[str]) -> None:
    """Mean version staleness and p99 (the max over repeats) per label, side by side."""
    x = list(range(len(labels)))
    mean = [
        sum(r["staleness_mean"] for r in runs if r["label"] == lb)
        / sum(1 for r in runs if r["label"] == lb)
        for lb in labels
    ]
    p99 = [max(r["staleness_p99"] or 0 for r in runs if r["label"] == lb) for lb in labels]
    ax.bar([i - 0.2 for i in x], mean, width=0.4, color="C0", label="mean")
    ax.bar([i + 0.2 for i in x], p99, width=0.4, color="C1", label="p99 (max of repeats)")
    ax.set_xticks(x, labels, rotation=20, fontsize=8)
    ax.set_ylabel("updates between pull and push")
    ax.legend(fontsize=8)
    ax.set_title("version staleness of applied pushes")


def transport(summary: dict[str, Any], path: Path) -> None:
    """Median MB/s down, up and both of raw TCP, the gRPC echo and the PS, side by side."""
    names = [("tcp", "raw TCP"), ("echo", "gRPC echo"), ("ps", "PS pull+push")]
    keys = [
        ("median_down_mb_per_s", "down"),
        ("median_up_mb_per_s", "up"),
        ("median_mb_per_s", "down+up"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    width = 0.26
    for k, (key, label) in enumerate(keys):
        xs = [i + (k - 1) * width for i in range(len(names))]
        values = [summary[n][key] for n, _ in names]
        ax.bar(xs, values, width=width, color=f"C{k}", label=label)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), [label for _, label in names])
    ax.set_ylabel("MB/s (median)")
    ax.legend(fontsize=8)
    ax.set_title(
        f"{summary['vector_mb']} MB over loopback: PS/echo = {summary['ratio_ps_over_echo']:.2f},"
        f" PS/TCP = {summary['ratio_ps_over_tcp']:.2f}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def peers(rows: list[dict[str, Any]], path: Path) -> None:
    """Per model, samples/s of every system and mode at each process count; for digits also
    the time to the target accuracy. ``rows`` are bench/peers.py's result rows."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    panels = [(m, "samples_per_s", "samples/s") for m in models]
    if any(r.get("time_to_target") is not None for r in rows):
        panels.append((models[0], "time_to_target", "s to target accuracy"))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, 3.4 * len(panels)), squeeze=False, constrained_layout=True
    )
    for ax, (model, key, ylabel) in zip(axes[:, 0], panels, strict=True):
        mine = [r for r in rows if r["model"] == model]
        labels = list(dict.fromkeys(r["label"] for r in mine))
        counts = sorted({r["processes"] for r in mine})
        width = 0.8 / len(counts)
        for k, n in enumerate(counts):
            values = []
            for label in labels:
                got = [r.get(key) for r in mine if r["label"] == label and r["processes"] == n]
                values.append(got[0] if got and got[0] is not None else 0.0)
            xs = [i + (k - (len(counts) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, values, width=width, color=f"C{k}", label=f"{n} process(es)")
            for x, v in zip(xs, values, strict=True):
                ax.text(
                    x,
                    v,
                    f"{v:.0f}" if v >= 10 else f"{v:.1f}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.set_title(
            f"{model}: {ylabel}" + (" (0: not reached)" if key == "time_to_target" else "")
        )
    fig.suptitle("pscluster vs PyTorch DDP (gloo), same processes, model and batches")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling(rows: list[dict[str, Any]], path: Path) -> None:
    """samples/s against workers, one line per shard count."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for k, shards in enumerate(sorted({r["shards"] for r in rows})):
        mine = sorted((r for r in rows if r["shards"] == shards), key=lambda r: r["workers"])
        xs = [r["workers"] for r in mine]
        ys = [r["samples_per_s"] for r in mine]
        ax.plot(xs, ys, marker="o", color=f"C{k}", label=f"{shards} shard(s)")
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y:.0f}",
                (x, y),
                fontsize=7,
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
            )
    ax.set_xticks(sorted({r["workers"] for r in rows}))
    ax.set_xlabel("workers")
    ax.set_ylabel("training samples/s")
    ax.legend(fontsize=8)
    ax.set_title("async scaling (more processes than cores oversubscribe them)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    kinds = ("compression", "staleness", "transport", "peers", "scaling")
    if len(sys.argv) != 3 or sys.argv[1] not in kinds:
        sys.exit(f"usage: python bench/plots.py {'|'.join(kinds)} RESULTS.json")
    path = Path(sys.argv[2])
    data = json.loads(path.read_text())
    if sys.argv[1] == "transport":
        transport(data, path.with_suffix(".png"))
    elif sys.argv[1] in ("peers", "scaling"):
        (peers if sys.argv[1] == "peers" else scaling)(data["rows"], path.with_suffix(".png"))
    elif sys.argv[1] == "compression":
        compression(data["results"], path.with_suffix(".png"))
    else:
        staleness(data["runs"], data["target"], path.with_suffix(".png"), data.get("title", ""))
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
