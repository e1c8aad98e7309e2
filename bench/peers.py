"""Training throughput and time to accuracy: pscluster against PyTorch DDP (gloo), same run.

Two models on scikit-learn's digits (examples/digits_data.py: 1437 training images):
``digits``, the example's MLP 64-128-10 (9,610 parameters; batch 32, 10 epochs, SGD lr 0.05
momentum 0.9 weight decay 1e-4, as examples/digits.yaml but 10 epochs instead of 20), and
``mlp5m``, WideNet from
bench/compression_model.py as 64-2368-2368-10 (5.79M parameters; batch 64, SGD lr 0.01
momentum 0.9, 3 epochs). For each process count N (default 1 and 2), in one run on one machine:

- ``DDP (gloo)``: N processes spawned by torch.multiprocessing, rendezvous on
  tcp://127.0.0.1:<free port>, gradients all-reduced, a local SGD step (bench/peers_ddp.py);
- ``pscluster``: one LocalCluster of N workers and 2 shards (real processes; the shards and the
  coordinator are processes DDP does not have), one job per setting: ``async``, ``sync``,
  ``ssp`` (s=2), async with int8 gradients, async with top-k 1% gradients, async with int8
  gradients and float16 pulls, each on 1 shard, plus ``async`` on 2 shards. The shards log
  every push (a write-ahead log fsynced before the push is acknowledged, and checkpoints);
  ``--durability memory`` (or ``log,memory`` for both) runs them in memory only, as DDP keeps
  its state, so that the two compare like for like.

Both train the same batches: the job has ``partitions = N`` and DDP rank r trains partition r
with pscluster's own batch plan (same seed); both start from the same parameters (the SDK
seeds the model's construction as DDP does), and both evaluate on the test set after every
epoch. samples/s = training samples / wall time (pscluster: the job's start to its finish;
DDP: after the process group is up to after the last evaluation), so both include their
evaluations; ``steady`` samples/s uses the span of the training steps only. DDP runs once
before and once after the pscluster jobs of each process count and its row is the mean of the
two, so that load from other work that drifts during the run hits both sides alike. Time to target:
seconds from that start to the first evaluation at >= 0.95 test accuracy (digits only).
Writes bench/results/peers.json and peers.png and prints a table with ratios pscluster/DDP.

    .venv/bin/python bench/peers.py [--processes 1,2] [--models digits,mlp5m] [--epochs E]
                                     [--settings async,sync,...] [--quick]
                                     [--durability log,memory]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots  # noqa: E402
from bench.common import machine  # noqa: E402
from bench.peers_bound import distances, step_bound  # noqa: E402
from bench.peers_common import (  # noqa: E402
    MODELS,
    SETTINGS,
    ModelBench,
    Setting,
    best_rows,
    ratio_rows,
    steady_rate,
    table,
    target_verdicts,
)
from bench.peers_ddp import DDPConfig, run_ddp  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET = 0.95
SHARDS = 2
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}


def time_to_target(curve: list[list[float]]) -> float | None:
    return next((t for t, acc in curve if acc >= TARGET), None)


def row(
    model: ModelBench,
    label: str,
    system: str,
    processes: int,
    samples: int,
    wall: float,
    curve: list[list[float]],
    steady: float | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "model": model.name,
        "params": model.params,
        "label": label,
        "system": system,
        "processes": processes,
        "samples": samples,
        "wall_s": round(wall, 3),
        "samples_per_s": round(samples / wall, 1) if wall > 0 else None,
        "steady_samples_per_s": round(steady, 1) if steady else None,
        "time_to_target": time_to_target(curve) if model.target else None,
        "final_accuracy": curve[-1][1] if curve else None,
        "curve": curve,
        **extra,
    }


def mean_of(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One DDP row from two runs: rates and times averaged; both runs kept under ``runs``."""
    out = {k: v for k, v in second.items() if k != "curve"}
    for key in ("wall_s", "samples_per_s", "steady_samples_per_s", "time_to_target"):
        values = [r[key] for r in (first, second) if r[key] is not None]
        out[key] = round(sum(values) / len(values), 3) if values else None
    out["runs"] = [first, second]
    return out


def run_ddp_row(model: ModelBench, world: int, scratch: Path) -> dict[str, Any]:
    opt = model.optimizer
    cfg = DDPConfig(
        model_file=str(model.model_file),
        model_class=model.class_name,
        model_kwargs=model.model_kwargs,
        data_file=str(model.data_file),
        epochs=model.epochs,
        batch_size=model.batch_size,
        lr=opt["lr"],
        momentum=opt.get("momentum", 0.0),
        weight_decay=opt.get("weight_decay", 0.0),
        seed=0,
    )
    r = run_ddp(cfg, world, scratch / f"ddp-{model.name}-{world}.json")
    steady = steady_rate(r["step_times"], r["step_samples"])
    curve = [[round(t, 3), round(a, 4)] for t, a in r["curve"]]
    return row(model, "DDP (gloo)", "ddp", world, r["samples"], r["wall_s"], curve, steady)


def run_ps_row(
    cluster: LocalCluster, model: ModelBench, setting: Setting, workers: int
) -> dict[str, Any]:
    """One job of ``setting`` on ``cluster``; its row says whether the shards log."""
    kwargs = {
        **model.submit_kwargs(),
        "mode": setting.mode,
        "staleness": setting.staleness,
        "partitions": workers,
        "shards": setting.shards,
        "compression": setting.compression,
        "local_steps": setting.local_steps,
        "seed": 0,
    }
    with cluster.client() as client:
        job = client.submit(**kwargs)
        info = job.wait(timeout=1800)
        metrics = job.metrics()
    if info.started_unix is None or info.finished_unix is None:
        raise RuntimeError(f"job {job.id} completed without start and finish times: {info}")
    started = info.started_unix
    samples = sum(s.samples for s in metrics.steps)
    curve = [[round(e.unix_time - started, 3), round(e.test_accuracy, 4)] for e in metrics.epochs]
    steady = steady_rate(
        [s.unix_time - started for s in metrics.steps], [s.samples for s in metrics.steps]
    )
    return row(
        model,
        setting.label if cluster.durable else f"{setting.label}, shards in memory",
        "pscluster",
        workers,
        samples,
        info.finished_unix - started,
        curve,
        steady,
        mode=setting.mode,
        shards=setting.shards,
        compression=setting.compression,
        local_steps=setting.local_steps,
        overlap=setting.overlap,
        durable=cluster.durable,
        bytes_pushed=metrics.bytes_pushed,
        bytes_pulled=metrics.bytes_pulled,
        # Where a worker's step went (ms per step by phase, over every worker's reports).
        phases_ms={k: round(1000 * v, 2) for k, v in metrics.phases_per_step().items()},
    )


def parse_args() -> tuple[argparse.Namespace, list[int], list[ModelBench], list[Setting]]:
    """The options, and the process counts, models and settings they name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="process counts (default 1,2)")
    parser.add_argument("--models", default=",".join(MODELS), help="default: all")
    parser.add_argument("--settings", default="", help="pscluster settings by key (default all)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny run (2 epochs, a 0.3M MLP) to check the script"
    )
    parser.add_argument("--epochs", type=int, default=0, help="epochs of every model (0: its own)")
    parser.add_argument(
        "--durability",
        default="log",
        help="the shards, comma-separated: log (a write-ahead log fsynced per push, "
        "checkpoints: the default) and/or memory (nothing on disk, as DDP)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    args = parser.parse_args()
    if args.epochs < 0:
        parser.error(f"--epochs must be 0 (each model's own) or more, got {args.epochs}")
    try:
        counts = sorted({int(p) for p in args.processes.split(",")})
    except ValueError:
        parser.error(f"--processes must be integers separated by commas, got {args.processes!r}")
    if not counts or counts[0] < 1:
        parser.error("--processes must be at least 1")
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; expected some of {sorted(MODELS)}")
    models = [MODELS[m](quick=args.quick) for m in args.models.split(",")]
    for m in models:
        m.epochs = args.epochs or m.epochs
    keys = args.settings.split(",") if args.settings else [s.key for s in SETTINGS]
    settings = [s for s in SETTINGS if s.key in keys]
    if len(settings) != len(keys):
        parser.error(f"--settings: expected some of {[s.key for s in SETTINGS]}, got {keys}")
    durability = args.durability.split(",")
    if not durability or not set(durability) <= {"log", "memory"}:
        parser.error(f"--durability: expected log and/or memory, got {args.durability!r}")
    args.durable = [d == "log" for d in dict.fromkeys(durability)]
    return args, counts, models, settings


def run_all(
    counts: list[int], models: list[ModelBench], settings: list[Setting], durable: list[bool]
) -> list[dict[str, Any]]:
    """Per process count: DDP, every pscluster setting on one cluster per overlap setting and
    durability, DDP again."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for n in counts:
            before = {m.name: run_ddp_row(m, n, scratch) for m in models}
            ps_rows: list[dict[str, Any]] = []
            # One cluster per overlap setting (a worker setting), overlapped first, and per
            # durability (a shard setting).
            for overlap, logs in itertools.product(
                sorted({s.overlap for s in settings}, reverse=True), durable
            ):
                env = {**ENV, "PSC_OVERLAP": "on" if overlap else "off"}
                state = scratch / f"cluster-{n}-{int(overlap)}-{int(logs)}"
                with LocalCluster(
                    shards=SHARDS, workers=n, state_dir=state, env=env, durable=logs
                ) as cluster:
                    for model in models:
                        for setting in (s for s in settings if s.overlap == overlap):
                            ps_rows.append(run_ps_row(cluster, model, setting, n))
                            brief = {k: v for k, v in ps_rows[-1].items() if k != "curve"}
                            print(json.dumps(brief), flush=True)
            # DDP runs before and after the pscluster jobs, and its row is their mean: load from
            # other work on the machine that drifts during the run then hits both sides alike.
            for m in models:
                rows.append(mean_of(before[m.name], run_ddp_row(m, n, scratch)))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)
            rows.extend(ps_rows)
    return rows


def print_summary(ratios: list[dict[str, Any]], best: list[dict[str, Any]]) -> None:
    print(table(ratios))
    for b in best:
        print(
            f"{b['model']}, {b['processes']} process(es): most samples/s with "
            f"{b['label']!r} at {b['ratio_samples_per_s']:.2f}x DDP"
        )
    for key, verdict in target_verdicts(ratios).items():
        print(f"{key}: {verdict}")


def main() -> None:
    args, counts, models, settings = parse_args()
    rows = run_all(counts, models, settings, args.durable)
    ratios = ratio_rows(rows)
    cores = os.cpu_count() or 1
    bounds = {f"{m.name}/{n}": step_bound(m, max(1, cores // n)) for m in models for n in counts}
    out = {
        "machine": {**machine(), "load_average": os.getloadavg()},
        "command": " ".join(["python", "bench/peers.py", *sys.argv[1:]]),
        "quick": args.quick,
        "target_accuracy": TARGET,
        "models": {m.name: m.describe() for m in models},
        "settings": [s.__dict__ for s in settings],
        "rows": rows,
        "ratios": ratios,
        "best": best_rows(ratios),
        "step_bounds": bounds,
        "distance_to_bound": distances(rows, bounds, models),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plots.peers(rows, png)
    print_summary(ratios, out["best"])
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
