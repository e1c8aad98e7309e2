"""Fine-tuning: every weight vs LoRA adapters, from the same base model on the same task.

The base model is examples/lora_model.py's BaseMLP 64-H-H-10 (H = 1024: 1.13M parameters,
wide enough that the frozen weights dominate), trained in this process on upright digits
(examples/digits_data.py). The task is the same digits turned a quarter (90 degrees), where
the base model is at chance. From the base's state (``init_from``, loaded by name), on one
local cluster (2 shards, 2 workers, sync, batch 32 per worker, partitions = workers):

- ``full fine-tune``: BaseMLP, every weight trainable, Adam lr 1e-3;
- ``LoRA r=R`` for each rank R: LoRAMLP, the base frozen (never pulled or pushed) and a
  rank-R adapter beside each layer, Adam lr 5e-3 (adapters start at zero).

Per job: bytes pushed and pulled per step (the shards' byte counters over the steps workers
reported; a step is one worker's batch), samples/s two ways (bench/baseline.py: the job's
start to finish, and the span between its first and last step report: "steady"), and the
final test accuracy on the rotated digits. Each setting is also trained in one plain PyTorch
process on the same batches and epochs (bench/baseline.py: a worker's threads, run right
before each cluster job; rows are medians of ``--repeats`` runs): the cluster's samples/s is
given as a ratio against it, and LoRA's figures as ratios against the full fine-tune's. A
local cluster's shards are durable (every push is logged, and fsynced before its reply by
default): ``--wal-fsync never`` measures how much of a step that costs. Writes
bench/results/finetune.json and finetune.png and prints a markdown table.

    .venv/bin/python bench/finetune.py [--hidden 1024] [--ranks 4,16] [--epochs 6]
                                       [--repeats 3] [--wal-fsync never] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots_training  # noqa: E402
from bench.baseline import accuracy, interleaved, machine, one_process, ratio  # noqa: E402
from examples.digits_data import load  # noqa: E402
from examples.lora_model import BaseMLP, LoRAMLP  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}
FULL = "full fine-tune"
Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def quarter_turn(split: Split) -> Split:
    def turn(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(x.reshape(-1, 8, 8), axes=(1, 2)).reshape(-1, 64))

    (x, y), (xt, yt) = split
    return (turn(x), y), (turn(xt), yt)


def train_base(args: argparse.Namespace, upright: Split) -> tuple[dict[str, Any], BaseMLP]:
    """The base model, trained here (one process): what both fine-tunes start from."""
    job = {
        "model": BaseMLP,
        "model_kwargs": {"hidden": args.hidden},
        "train": upright[0],
        "test": upright[1],
        "epochs": args.base_epochs,
        "batch_size": 32,
        "partitions": 1,
        "seed": 0,
        "optimizer": {"name": "adam", "lr": 1e-3},
    }
    done, model = one_process(job)
    if not isinstance(model, BaseMLP):
        raise TypeError(f"expected a BaseMLP, got {type(model).__name__}")
    return done, model


def settings(args: argparse.Namespace, base: BaseMLP, rotated: Split) -> dict[str, dict[str, Any]]:
    """Client.submit's keyword arguments of each fine-tune, keyed by the row's label."""
    common: dict[str, Any] = {
        "train": rotated[0],
        "test": rotated[1],
        "epochs": args.epochs,
        "batch_size": 32,
        "mode": "sync",
        "partitions": args.workers,
        "seed": 0,
        "init_from": {k: v.detach().clone() for k, v in base.state_dict().items()},
    }
    out = {
        FULL: {
            **common,
            "model": BaseMLP,
            "model_kwargs": {"hidden": args.hidden},
            "optimizer": {"name": "adam", "lr": 1e-3},
            "name": "finetune-full",
        }
    }
    for rank in args.ranks:
        out[f"LoRA r={rank}"] = {
            **common,
            "model": LoRAMLP,
            "model_kwargs": {"hidden": args.hidden, "rank": rank},
            "optimizer": {"name": "adam", "lr": 5e-3},
            "name": f"finetune-lora-r{rank}",
        }
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cluster row against its one-process row and against the full fine-tune's row."""
    alone = {r["label"]: r for r in rows if r["system"] == "one process"}
    cluster = {r["label"]: r for r in rows if r["system"] == "pscluster"}
    full = cluster[FULL]
    out = []
    for label, r in cluster.items():
        out.append(
            {
                "label": label,
                "trainable_params": r["trainable_params"],
                "bytes_pushed_per_step": r["bytes_pushed_per_step"],
                "bytes_pulled_per_step": r["bytes_pulled_per_step"],
                "full_over_pushed": ratio(
                    full["bytes_pushed_per_step"], r["bytes_pushed_per_step"]
                ),
                "full_over_pulled": ratio(
                    full["bytes_pulled_per_step"], r["bytes_pulled_per_step"]
                ),
                "steady_samples_per_s": r["steady_samples_per_s"],
                "samples_per_s": r["samples_per_s"],
                "speedup_vs_full": ratio(r["steady_samples_per_s"], full["steady_samples_per_s"]),
                "one_process_steady": alone[label]["steady_samples_per_s"],
                "vs_one_process": ratio(
                    r["steady_samples_per_s"], alone[label]["steady_samples_per_s"]
                ),
                "final_accuracy": r["final_accuracy"],
                "one_process_accuracy": alone[label]["final_accuracy"],
            }
        )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | trainable params | bytes pushed / step | bytes pulled / step | full / this "
        "(pushed) | steady samples/s | x full | samples/s (start to finish) | one process "
        "steady samples/s | cluster / one process | final test accuracy (one process) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['trainable_params']:,} | {r['bytes_pushed_per_step']:,} | "
            f"{r['bytes_pulled_per_step']:,} | {r['full_over_pushed']:.1f}x | "
            f"{r['steady_samples_per_s']:.0f} | {r['speedup_vs_full']:.2f} | "
            f"{r['samples_per_s']:.0f} | {r['one_process_steady']:.0f} | "
            f"{r['vs_one_process']:.2f} | {r['final_accuracy']:.4f} "
            f"({r['one_process_accuracy']:.4f}) |"
        )
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024, help="width of the MLP")
    parser.add_argument("--ranks", default="4,16", help="LoRA ranks, comma-separated")
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each fine-tune")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting")
    parser.add_argument(
        "--wal-fsync",
        choices=["always", "interval", "never"],
        default="always",
        help="the shards' PSC_WAL_FSYNC (a local cluster logs every push; default: always)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny run (H=256, 1 epoch, rank 4) to check it"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "finetune.json")
    args = parser.parse_args()
    try:
        args.ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        parser.error(f"--ranks must be integers separated by commas, got {args.ranks!r}")
    if min(args.ranks) < 1 or min(args.epochs, args.base_epochs, args.workers, args.repeats) < 1:
        parser.error("--ranks, --epochs, --base-epochs, --workers and --repeats must be >= 1")
    if args.quick:
        args.hidden, args.ranks, args.base_epochs, args.epochs, args.repeats = 256, [4], 2, 1, 1
    return args


def main() -> None:
    args = parse()
    upright = load()
    rotated = quarter_turn(upright)
    base_row, base = train_base(args, upright)
    x, y = (torch.from_numpy(a) for a in rotated[1])
    base_rotated = accuracy(base, x, y)
    print(
        f"base: upright test accuracy {base_row['final_accuracy']:.4f}, rotated {base_rotated:.4f}"
    )
    jobs = [({"label": k}, job) for k, job in settings(args, base, rotated).items()]
    env = {**ENV, "PSC_WAL_FSYNC": args.wal_fsync}
    rows = interleaved(jobs, workers=args.workers, repeats=args.repeats, env=env)
    summary = ratios(rows)
    out = {
        "machine": machine(),
        "command": " ".join(["python", "bench/finetune.py", *sys.argv[1:]]),
        "quick": args.quick,
        "setup": {
            "hidden": args.hidden,
            "ranks": args.ranks,
            "base_epochs": args.base_epochs,
            "epochs": args.epochs,
            "workers": args.workers,
            "shards": 2,
            "repeats": args.repeats,
            "wal_fsync": args.wal_fsync,
        },
        "base": {"upright_accuracy": base_row["final_accuracy"], "rotated_accuracy": base_rotated},
        "rows": rows,
        "ratios": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plots_training.finetune(rows, png)
    print(table(summary))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
