"""Gradient compression: final accuracy and bytes pushed for every codec, on two models.

Runs one local cluster (2 shards, 3 workers) and submits, one after the other, the digits
example job (examples/digits.yaml, ~9.5k parameters) and a larger job (WideNet, ~6.3M
parameters, digits upsampled to 32x32) once per codec. ``dgc`` runs with a server optimizer
without momentum (its momentum is on the workers) and one warm-up epoch (the paper warms up
over 4 of ~90 epochs; more than one of 5-20 epochs would dominate the bytes sent). Also one
run per model with float16 pulls (``pull_dtype``) to see whether compressing pulls pays.
Writes bench/results/compression.json and prints a markdown table (matplotlib is not
installed here, so there is no plot).

    .venv/bin/python bench/compression.py [--digits-epochs 20] [--wide-epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compression_model import WideNet  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402

RUNS: list[tuple[str, dict[str, Any]]] = [
    ("none", {"name": "none"}),
    ("fp16", {"name": "fp16"}),
    ("bf16", {"name": "bf16"}),
    ("int8", {"name": "int8"}),
    ("topk 1% + EF", {"name": "topk", "ratio": 0.01}),
    ("dgc 0.1%", {"name": "dgc", "ratio": 0.001, "momentum": 0.9, "warmup_epochs": 1}),
    ("none, fp16 pulls", {"name": "none", "pull_dtype": "float16"}),
]


def upsampled(
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def up(x: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(x).reshape(-1, 1, 8, 8)
        big = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        return big.reshape(len(x), -1).numpy().astype(np.float32)

    (x, y), (xt, yt) = data
    return (up(x), y), (up(xt), yt)


def jobs(digits_epochs: int, wide_epochs: int) -> dict[str, dict[str, Any]]:
    digits = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    digits = {**digits, "mode": "async", "epochs": digits_epochs}
    train, test = upsampled((digits["train"], digits["test"]))
    wide = {
        **digits,
        "model": WideNet,
        "model_kwargs": {},
        "train": train,
        "test": test,
        "epochs": wide_epochs,
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
        "name": "wide",
    }
    return {"digits": digits, "wide": wide}


def run(
    cluster: LocalCluster, kwargs: dict[str, Any], compression: dict[str, Any]
) -> dict[str, Any]:
    kwargs = {**kwargs, "compression": compression}
    if compression["name"] == "dgc":
        # DGC accumulates momentum on the workers; the shard applies the sparse sum as is.
        kwargs["optimizer"] = {**kwargs["optimizer"], "momentum": 0.0}
    start = time.monotonic()
    with cluster.client() as client:
        job = client.submit(**kwargs)
        info = job.wait(timeout=1800)
        metrics = job.metrics()
    return {
        "state": info.state,
        "accuracy": info.test_accuracy,
        "seconds": round(time.monotonic() - start, 1),
        "num_params": info.num_params,
        "bytes_pushed": metrics.bytes_pushed,
        "bytes_pushed_raw": metrics.bytes_pushed_raw,
        "bytes_pulled": metrics.bytes_pulled,
        "ratio": metrics.compression_ratio,
        "pushes_applied": metrics.pushes_applied,
    }


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| model | codec | test accuracy | Δ vs none (points) | MB pushed | raw/pushed "
        "| MB pulled | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, rows in results.items():
        base = rows["none"]["accuracy"]
        for codec, r in rows.items():
            lines.append(
                f"| {model} ({r['num_params'] / 1e6:.2f}M) | {codec} | {r['accuracy']:.4f} | "
                f"{100 * (r['accuracy'] - base):+.1f} | {r['bytes_pushed'] / 1e6:.1f} | "
                f"{r['ratio']:.1f}x | {r['bytes_pulled'] / 1e6:.1f} | {r['seconds']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--wide-epochs", type=int, default=4)
    parser.add_argument("--models", default="digits,wide")
    args = parser.parse_args()
    chosen = jobs(args.digits_epochs, args.wide_epochs)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory() as state,
        LocalCluster(
            shards=2, workers=3, state_dir=state, env={"PSC_HEARTBEAT_SECONDS": "0.5"}
        ) as cluster,
    ):
        for model in args.models.split(","):
            results[model] = {}
            for label, compression in RUNS:
                r = run(cluster, chosen[model], compression)
                results[model][label] = r
                print(f"{model:6} {label:18} {json.dumps(r)}", flush=True)
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "setup": "2 shards, 3 workers, async, batch 32, one local cluster",
        "command": " ".join(["python", "bench/compression.py", *sys.argv[1:]]),
        "results": results,
    }
    path = ROOT / "bench" / "results" / "compression.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(table(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
