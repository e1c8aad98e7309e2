"""Scaling: training samples/s of an async job for 1, 2 and 4 workers x 1, 2 and 4 shards.

One LocalCluster per worker count (4 shards, real processes; the coordinator and the shards
are processes beside the workers), one job per shard count (the job's ``shards``), the shard
counts in order inside each worker count. The model is ``digits`` by default (the example's
MLP 64-128-10, batch 32, SGD lr 0.05 momentum 0.9; per step the cost is the round trips, not
the bytes) or ``mlp5m`` (WideNet 64-2368-2368-10, 5.79M parameters, batch 64: the bytes
dominate), with the coordinator's default partitions (12). samples/s = training samples / the
job's wall time (start to finish, evaluations included); ``steady`` uses the span of the
training steps only. On a machine with fewer cores than workers + shards the processes share
(oversubscribe) the cores, and the script says so: past that point more processes cannot add
throughput, they only divide it. Writes bench/results/scaling.json and scaling.png.

    .venv/bin/python bench/scaling.py [--model digits|mlp5m] [--epochs 3] [--workers 1,2,4]
                                      [--shards 1,2,4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots  # noqa: E402
from bench.peers_common import MODELS, ModelBench, steady_rate  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}


def run(cluster: LocalCluster, model: ModelBench, workers: int, shards: int) -> dict[str, Any]:
    with cluster.client() as client:
        job = client.submit(**model.submit_kwargs(), mode="async", shards=shards, seed=0)
        info = job.wait(timeout=1800)
        metrics = job.metrics()
    if info.started_unix is None or info.finished_unix is None:
        raise RuntimeError(f"job {job.id} completed without start and finish times: {info}")
    started = info.started_unix
    wall = info.finished_unix - started
    samples = sum(s.samples for s in metrics.steps)
    steady = steady_rate(
        [s.unix_time - started for s in metrics.steps], [s.samples for s in metrics.steps]
    )
    cores = os.cpu_count() or 1
    return {
        "workers": workers,
        "shards": shards,
        "processes": workers + shards + 1,
        # The coordinator is mostly idle during training: workers and shards are the load.
        "oversubscribed": workers + shards > cores,
        "samples": samples,
        "wall_s": round(wall, 3),
        "samples_per_s": round(samples / wall, 1) if wall > 0 else None,
        "steady_samples_per_s": round(steady, 1) if steady else None,
        "final_accuracy": metrics.final_accuracy,
    }


def parse_counts(parser: argparse.ArgumentParser, name: str, text: str) -> list[int]:
    try:
        counts = sorted({int(c) for c in text.split(",")})
    except ValueError:
        parser.error(f"--{name} must be integers separated by commas, got {text!r}")
    if not counts or counts[0] < 1:
        parser.error(f"--{name} must be at least 1, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1,2 x 1,2: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    workers = parse_counts(parser, "workers", "1,2" if args.quick else args.workers)
    shards = parse_counts(parser, "shards", "1,2" if args.quick else args.shards)
    model = MODELS[args.model](quick=args.quick)
    model.epochs = 1 if args.quick else args.epochs
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in workers:
            with LocalCluster(
                shards=max(shards), workers=w, state_dir=Path(tmp) / f"cluster-{w}", env=ENV
            ) as cluster:
                for s in shards:
                    rows.append(run(cluster, model, w, s))
                    print(json.dumps(rows[-1]), flush=True)
    note = (
        f"this machine has {cores} cores: a configuration runs workers + shards busy processes "
        "(and a mostly idle coordinator); those with more than "
        f"{cores} (marked *) oversubscribe the cores, so their samples/s measure how the "
        "processes share the cores, not how the system scales"
    )
    out = {
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "command": " ".join(["python", "bench/scaling.py", *sys.argv[1:]]),
        "model": {"name": model.name, **model.describe()},
        "mode": "async",
        "note": note,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plots.scaling(rows, png)
    print(f"model {model.name} ({model.params:,} parameters), async, {model.epochs} epoch(s)")
    print("| workers | shards | processes | samples/s | steady samples/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = " *" if r["oversubscribed"] else ""
        print(
            f"| {r['workers']} | {r['shards']} | {r['processes']}{mark} | "
            f"{r['samples_per_s']:.0f} | {r['steady_samples_per_s'] or 0:.0f} |"
        )
    print(f"note: {note}")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
