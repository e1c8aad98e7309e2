"""Figures of bench/finetune.py and bench/precision.py (matplotlib, Agg backend).

Each takes the ``rows`` its script writes to JSON, so a figure can be redrawn from a saved
run: ``python bench/plots_training.py finetune bench/results/finetune.json``.
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


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], fmt: str) -> None:
    """Grouped bars, one group per label and one colour per series, values written above."""
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width=width, color=f"C{k}", label=name)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, format(v, fmt), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.legend(fontsize=8)


def finetune(rows: Rows, path: Path) -> None:
    """Bytes per step (log scale) and steady samples/s, cluster and one process, per setting."""
    labels = list(dict.fromkeys(r["label"] for r in rows))

    def pick(system: str, key: str) -> list[float]:
        got = {r["label"]: r.get(key) for r in rows if r["system"] == system}
        return [float(got.get(label) or 0.0) for label in labels]

    fig, (bytes_ax, rate_ax) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    _bars(
        bytes_ax,
        labels,
        {
            "pushed": pick("pscluster", "bytes_pushed_per_step"),
            "pulled": pick("pscluster", "bytes_pulled_per_step"),
        },
        ".3g",
    )
    bytes_ax.set_yscale("log")
    bytes_ax.set_ylabel("bytes per step (log scale)")
    bytes_ax.set_title("what one step moves")
    _bars(
        rate_ax,
        labels,
        {
            "pscluster": pick("pscluster", "steady_samples_per_s"),
            "one process (a worker's threads)": pick("one process", "steady_samples_per_s"),
        },
        ".0f",
    )
    rate_ax.set_ylabel("training samples/s (first to last step)")
    rate_ax.set_title("throughput")
    fig.suptitle("Fine-tuning: every weight vs LoRA adapters")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def precision(rows: Rows, path: Path) -> None:
    """Per model: steady samples/s of fp32 and bf16, on the cluster and in one process."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(
        1, len(models), figsize=(5.5 * len(models), 4), squeeze=False, constrained_layout=True
    )
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        systems = list(dict.fromkeys(r["system"] for r in mine))
        precisions = list(dict.fromkeys(r["precision"] for r in mine))
        series = {
            p: [
                float(
                    next(
                        (r["steady_samples_per_s"] or 0.0)
                        for r in mine
                        if r["system"] == s and r["precision"] == p
                    )
                )
                for s in systems
            ]
            for p in precisions
        }
        _bars(ax, systems, series, ".0f")
        ax.set_ylabel("training samples/s (first to last step)")
        ax.set_title(f"{model} ({mine[0]['trainable_params'] / 1e3:.0f}k parameters)")
    fig.suptitle("fp32 vs bf16 autocast on CPU (one process: a worker's threads)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    kinds = {"finetune": finetune, "precision": precision}
    if len(sys.argv) != 3 or sys.argv[1] not in kinds:
        sys.exit(f"usage: python bench/plots_training.py {'|'.join(kinds)} RESULTS.json")
    path = Path(sys.argv[2])
    kinds[sys.argv[1]](json.loads(path.read_text())["rows"], path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
