"""Mixed precision on CPU workers: fp32 vs bf16 autocast, samples/s and final accuracy.

Two models on digits as 1x8x8 images (examples/digits_data.py), both
examples/cnn_model.py's DigitsCNN (conv-BatchNorm-ReLU-pool twice, a linear head):

- ``cnn``: 16 channels (6.2k parameters), batch 32, 10 epochs: the example's job
  (examples/cnn_batchnorm.py), where the per-step costs of a cluster outweigh the arithmetic;
- ``cnn-wide``: 128 channels (307k parameters, ~4.7M multiply-adds per image), batch 64,
  5 epochs: enough arithmetic per step for bf16 to matter on a CPU with bf16 instructions.

Each in fp32 and in bf16 (``precision="bf16"``: workers run forward and loss under CPU
autocast; the shards keep float32 weights and optimizer state, pushes and pulls stay float32),
on one local cluster (2 shards, 2 workers, sync, partitions = workers, SGD lr 0.05 momentum
0.9), and in one plain PyTorch process on the same batches and epochs with the same autocast
(bench/baseline.py: a worker's threads, run right before each cluster job; rows are medians
of ``--repeats`` runs). samples/s are given two ways (the job's start to finish, and "steady":
between its first and last step report) and as ratios: bf16 over fp32 on each side, and the
cluster over one process. Writes bench/results/precision.json and precision.png and prints a
markdown table.

    .venv/bin/python bench/precision.py [--models cnn,cnn-wide] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots_training  # noqa: E402
from bench.baseline import interleaved, machine, ratio  # noqa: E402
from examples.cnn_model import DigitsCNN  # noqa: E402
from examples.digits_data import load  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Model:
    name: str
    channels: int
    batch_size: int
    epochs: int


MODELS = {
    "cnn": Model("cnn", 16, 32, 10),
    "cnn-wide": Model("cnn-wide", 128, 64, 5),
}
QUICK = {"cnn": Model("cnn", 16, 32, 1), "cnn-wide": Model("cnn-wide", 32, 64, 1)}


def images() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    (x, y), (xt, yt) = load()
    return (x.reshape(-1, 1, 8, 8), y), (xt.reshape(-1, 1, 8, 8), yt)


def jobs(models: list[Model], workers: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Client.submit's keyword arguments of each setting, with the labels of its rows."""
    train, test = images()
    out = []
    for m in models:
        for precision in PRECISIONS:
            job = {
                "model": DigitsCNN,
                "model_kwargs": {"channels": m.channels},
                "train": train,
                "test": test,
                "epochs": m.epochs,
                "batch_size": m.batch_size,
                "mode": "sync",
                "partitions": workers,
                "seed": 0,
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                "precision": precision,
                "name": f"precision-{m.name}-{precision}",
            }
            out.append(({"model": m.name, "precision": precision}, job))
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cluster row with its one-process twin, and bf16 against fp32 on both sides."""
    by = {(r["model"], r["precision"], r["system"]): r for r in rows}
    out = []
    for (model, precision, system), r in by.items():
        if system != "pscluster":
            continue
        alone = by[(model, precision, "one process")]
        fp32, fp32_alone = by[(model, "fp32", "pscluster")], by[(model, "fp32", "one process")]
        out.append(
            {
                "model": model,
                "precision": precision,
                "trainable_params": r["trainable_params"],
                "steady_samples_per_s": r["steady_samples_per_s"],
                "samples_per_s": r["samples_per_s"],
                "vs_fp32": ratio(r["steady_samples_per_s"], fp32["steady_samples_per_s"]),
                "one_process_steady": alone["steady_samples_per_s"],
                "one_process_vs_fp32": ratio(
                    alone["steady_samples_per_s"], fp32_alone["steady_samples_per_s"]
                ),
                "vs_one_process": ratio(r["steady_samples_per_s"], alone["steady_samples_per_s"]),
                "final_accuracy": r["final_accuracy"],
                "one_process_accuracy": alone["final_accuracy"],
            }
        )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | precision | steady samples/s | x fp32 | samples/s (start to finish) | one "
        "process steady samples/s | x fp32 | cluster / one process | final test accuracy "
        "(one process) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['trainable_params'] / 1e3:.1f}k) | {r['precision']} | "
            f"{r['steady_samples_per_s']:.0f} | {r['vs_fp32']:.2f} | {r['samples_per_s']:.0f} | "
            f"{r['one_process_steady']:.0f} | {r['one_process_vs_fp32']:.2f} | "
            f"{r['vs_one_process']:.2f} | {r['final_accuracy']:.4f} "
            f"({r['one_process_accuracy']:.4f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="default: all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting")
    parser.add_argument(
        "--quick", action="store_true", help="tiny run (1 epoch, 32 channels) to check it"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = parser.parse_args()
    chosen = QUICK if args.quick else MODELS
    names = args.models.split(",")
    unknown = [n for n in names if n not in chosen]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; expected some of {list(chosen)}")
    if args.workers < 1 or args.repeats < 1:
        parser.error("--workers and --repeats must be at least 1")
    repeats = 1 if args.quick else args.repeats
    settings = jobs([chosen[n] for n in names], args.workers)
    rows = interleaved(settings, workers=args.workers, repeats=repeats, env=ENV)
    summary = ratios(rows)
    out = {
        "machine": machine(),
        "command": " ".join(["python", "bench/precision.py", *sys.argv[1:]]),
        "quick": args.quick,
        "setup": {
            "models": [asdict(chosen[n]) for n in names],
            "workers": args.workers,
            "shards": 2,
            "mode": "sync",
            "repeats": repeats,
        },
        "rows": rows,
        "ratios": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plots_training.precision(rows, png)
    print(table(summary))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
