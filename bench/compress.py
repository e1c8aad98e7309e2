"""Compressed digits models: size, CPU latency and accuracy of each variant beside the original.

One local cluster (2 shards, 3 workers) trains bench/compress_model.py's WideDigits (1.13M
parameters) on the digits split of examples/digits_data.py (async, SGD lr 0.05 momentum 0.9,
``--epochs``), then compresses the trained job through the SDK, as a user would:

- ``int8``: dynamic quantization of the Linear layers (TorchScript file);
- ``fp16``, ``bf16``: half-precision weights (safetensors);
- ``unstructured 50% + N epochs``: global magnitude pruning, then a fine-tune job on the
  cluster with the pruned weights held at zero on the shards;
- ``structured 50% + N epochs``: half the neurons of each hidden layer (L1 norm), the same
  fine-tune, then sliced to a smaller model (TorchScript);
- ``structured 50% + N epochs + int8``: that model quantized;
- ``not pruned + N epochs``: the control, the trained model fine-tuned as the pruned ones are
  (a pruned row's change against the original also holds what these epochs add).

Every variant is scored on the whole test set, and timed on the same 256 test rows with 1
intra-op thread (median of ``--repeats`` calls), all variants again together at the end with
their calls interleaved, so that the table compares them under the same conditions.

``--runs`` repeats all of it with seeds ``--seed``, ``--seed`` + 1, ... (async training and
its fine-tunes differ from run to run). Writes bench/results/compress.json (the first run as
a compression report, which ``pscluster plot bench/results/compress.json -o ...`` draws, and
every run under "runs") and compress.png, and prints a markdown table per run and the
accuracy change of each variant across runs.

    .venv/bin/python bench/compress.py [--epochs 10] [--finetune-epochs 3] [--repeats 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import machine  # noqa: E402
from bench.compress_model import WideDigits  # noqa: E402
from examples.digits_data import load  # noqa: E402
from pscluster.client.compress_job import FINETUNE_LR_SCALE  # noqa: E402
from pscluster.client.job import Job  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.sdk import Client  # noqa: E402
from pscluster.model_compression import CompressionReport, Variant, measure  # noqa: E402
from pscluster.model_compression.measure import TestSet  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}
OPTIMIZER: dict[str, Any] = {"name": "sgd", "lr": 0.05, "momentum": 0.9}


def variants(finetune_epochs: int) -> list[dict[str, Any]]:
    """The compress() keyword arguments of each variant, in table order."""
    unstructured = {"amount": 0.5, "structured": False}
    structured = {"amount": 0.5, "structured": True}
    return [
        {"quantize": "int8"},
        {"quantize": "fp16"},
        {"quantize": "bf16"},
        {"prune": unstructured, "finetune_epochs": finetune_epochs},
        {"prune": structured, "finetune_epochs": finetune_epochs},
        {"prune": structured, "finetune_epochs": finetune_epochs, "quantize": "int8"},
    ]


def run(
    args: argparse.Namespace, seed: int, scratch: Path
) -> tuple[CompressionReport, dict[str, Any]]:
    """Train once, compress every way; one report (the original once) and the timings."""
    train, test = load()
    with LocalCluster(shards=2, workers=3, state_dir=scratch / "cluster", env=ENV) as cluster:
        cluster.wait_for_workers(3, timeout=120)
        with cluster.client() as client:
            started = time.perf_counter()
            job = client.submit(
                model=WideDigits, train=train, test=test, epochs=args.epochs,
                optimizer=OPTIMIZER, seed=seed, name=f"compress-bench-{seed}",
            )  # fmt: skip
            info = job.wait(timeout=1800)
            trained_s = time.perf_counter() - started
            rows, seconds, models = compress_all(job, args, scratch)
            original = WideDigits()
            original.load_state_dict(job.fetch_model())
            control, control_row = unpruned_finetune(client, job, args, seed, rows[0])
    # Each compress() timed its variant beside its own copy of the original; the table puts
    # every variant beside one original, so all are timed again here, together, interleaved.
    batch = torch.from_numpy(test[0][: rows[0].batch_rows])
    latencies = measure.latencies_ms(
        [original, control, *models], batch, threads=args.threads, repeats=args.repeats
    )
    variants = (rows[0].original, control_row, *(r.variants[-1] for r in rows))
    merged = CompressionReport(
        source=f"WideDigits {job.id}",
        metric_name=rows[0].metric_name,
        test_rows=rows[0].test_rows,
        batch_rows=rows[0].batch_rows,
        threads=rows[0].threads,
        repeats=rows[0].repeats,
        variants=tuple(
            replace(v, latency_ms=ms) for v, ms in zip(variants, latencies, strict=True)
        ),
        notes=tuple(sorted({n for r in rows for n in r.notes})),
    )
    timings = {
        "seed": seed,
        "train_seconds": round(trained_s, 1),
        "trained_accuracy": info.test_accuracy,
        "compress_seconds": seconds,
        # As each compress() call measured them: (original, variant) ms per batch.
        "latency_ms_per_call": [
            [round(r.original.latency_ms, 4), round(r.variants[-1].latency_ms, 4)] for r in rows
        ],
    }
    return merged, timings


def unpruned_finetune(
    client: Client, job: Job, args: argparse.Namespace, seed: int, report: CompressionReport
) -> tuple[nn.Module, Variant]:
    """The control: the fine-tune the pruned variants get (the job's optimizer at a tenth of
    its learning rate, the same epochs), of the trained model as it is. What pruning costs
    is the pruned rows against this one; against the original they also gain these epochs."""
    train, test = load()
    lr = OPTIMIZER["lr"] * FINETUNE_LR_SCALE
    tuned = client.submit(
        model=WideDigits, train=train, test=test, init_from=job, epochs=args.finetune_epochs,
        optimizer={**OPTIMIZER, "lr": lr}, seed=seed, name="compress-control",
    )  # fmt: skip
    tuned.wait(timeout=1800)
    model = WideDigits()
    model.load_state_dict(tuned.fetch_model())
    test_set = TestSet(torch.from_numpy(test[0]), torch.from_numpy(test[1]))
    result = measure.evaluate(model, test_set)
    row = replace(
        report.original,
        name=f"not pruned + {args.finetune_epochs} epochs",
        metric=result["accuracy"],
        loss=result["loss"],
        finetune_job=tuned.id,
    )
    return model, row


def compress_all(
    job: Job, args: argparse.Namespace, scratch: Path
) -> tuple[list[CompressionReport], list[float], list[nn.Module]]:
    """Each variant through ``job.compress``: its report, the seconds it took, its model."""
    reports, seconds, models = [], [], []
    for i, kwargs in enumerate(variants(args.finetune_epochs)):
        started = time.perf_counter()
        suffix = ".pt" if needs_script(kwargs) else ".safetensors"
        result = job.compress(
            **kwargs, output=scratch / f"variant-{i}{suffix}", repeats=args.repeats,
            threads=args.threads,
        )  # fmt: skip
        seconds.append(round(time.perf_counter() - started, 1))
        reports.append(result.report)
        models.append(result.model)
        print(result.report.markdown().splitlines()[-1], flush=True)
    return reports, seconds, models


def needs_script(kwargs: dict[str, Any]) -> bool:
    """int8 and structured pruning are written as TorchScript (artefact.py says why)."""
    prune = kwargs.get("prune") or {}
    return kwargs.get("quantize") == "int8" or bool(prune.get("structured"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="trainings, each compressed")
    parser.add_argument("--seed", type=int, default=0, help="of the first run")
    parser.add_argument("--out", type=Path, default=RESULTS / "compress.json")
    args = parser.parse_args()
    runs = []
    for seed in range(args.seed, args.seed + args.runs):
        with tempfile.TemporaryDirectory(prefix="psc-bench-compress-") as scratch:
            report, timings = run(args, seed, Path(scratch))
        print(report.markdown())
        print(json.dumps(timings), flush=True)
        runs.append((report, timings))
    first = runs[0][0]
    out = {
        **first.to_json(),
        "machine": machine(),
        "command": " ".join(["python", "bench/compress.py", *sys.argv[1:]]),
        "runs": [{**r.to_json(), "timings": t} for r, t in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    from pscluster.client import cli_plot, compress_plot

    compress_plot.draw(first, png, cli_plot._pyplot())
    for note in first.notes:
        print(f"note: {note}")
    print("accuracy change (points) per run, against the original: " + "; ".join(
        f"{v.name}: " + ", ".join(f"{r.change(r.variants[i]):+.2f}" for r, _ in runs)
        for i, v in enumerate(first.variants[1:], start=1)
    ))  # fmt: skip
    print("the pruned against the control (not pruned + the same epochs): " + "; ".join(
        f"{v.name}: " + ", ".join(
            f"{100 * (r.variants[i].metric - r.variants[1].metric):+.2f}" for r, _ in runs
        )
        for i, v in enumerate(first.variants) if "%" in v.name
    ))  # fmt: skip
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
