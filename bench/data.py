"""Reading the data where it lives: uploaded arrays against the three kinds of data source.

The data are examples/make_big_digits.py's augmented digits (1x32x32 float32 and a label,
4,104 bytes a row), written once per size under data/bench-<MB>mb/ as ``.npy`` shards and as
Parquet (row groups of 4,096 rows). One local cluster (1 shard, 1 worker) trains the same
model (bench/data_model.py's SmallCNN, async, batch 256, 8 partitions) four ways:

- ``uploaded``: the arrays read into this process and sent with the job (``train=``); the
  worker fetches its lease's partition as byte ranges and holds it in memory: the baseline;
- ``npy``: ``data="npy"``, memory-mapped shards read by the worker's loader process;
- ``parquet``: ``data="parquet"``, row groups decoded by the loader process;
- ``augmented``: the user's own dataset (``Digits32``: one sample at a time from the
  memory-mapped shards, shifted and noised per sample, seeded by the loader).

Per run: time to first step (submit called to the first step's report, so upload, the
coordinator, the worker's first read and first pull all count), steady samples/s over
``--seconds`` of training after it (the job is then cancelled), and the peak RSS of each
process (coordinator, shard, worker, the worker's loader processes, this process, which is
the client). Where the time goes: the same lease plans read by the source alone in this
process (loader samples/s, no training), and the model's forward and backward alone on
in-memory batches (compute samples/s, one thread, as the worker has): loading is not the
bottleneck while its rate is well above compute's. Writes bench/results/data.json and prints
a markdown table; sizes are in MB of training data.

    .venv/bin/python bench/data.py [--sizes 50,2200] [--seconds 30] [--loader-workers 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
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

from bench.common import machine  # noqa: E402
from bench.data_model import SmallCNN, make_digits32  # noqa: E402
from bench.peers_common import steady_rate  # noqa: E402
from bench.proc_sampler import cluster_sampler  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.data.loading import LoaderSettings, SplitLoader  # noqa: E402
from pscluster.data.partitions import batches  # noqa: E402
from pscluster.data.sources import BUILTIN  # noqa: E402
from pscluster.data.sources.base import DataSource, block_rows  # noqa: E402
from pscluster.data.sources.function import FunctionSource  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VARIANTS = ("uploaded", "npy", "parquet", "augmented")
BATCH, MAX_PARTITIONS, ROW_GROUP, SEED = 256, 8, 4096, 0
JOB: dict[str, Any] = {
    "model": SmallCNN,
    "mode": "async",
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "epochs": 1000,  # cancelled after the measured window
    "batch_size": BATCH,
    "seed": SEED,
}


def partitions_for(data: dict[str, Path]) -> int:
    """8, or fewer when the Parquet copy has fewer row groups (a partition is whole groups):
    the same for every variant of a size, so that each does the same work."""
    rows = json.loads((data["npy"] / "manifest.json").read_text())["train"]["rows"]
    return min(MAX_PARTITIONS, -(-int(rows) // ROW_GROUP))


def make_data(megabytes: int) -> dict[str, Path]:
    """The npy and Parquet copies of ``megabytes`` of training data (made once, kept)."""
    out = {}
    for fmt in ("npy", "parquet"):
        folder = ROOT / "data" / f"bench-{megabytes}mb-{fmt}"
        if not (folder / "manifest.json").exists():
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "examples" / "make_big_digits.py"),
                    "--out",
                    str(folder),
                    "--megabytes",
                    str(megabytes),
                    "--format",
                    fmt,
                ],
                check=True,
            )
        out[fmt] = folder
    return out


def arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs = sorted((folder / split).glob("x-*.npy"))
    x = np.concatenate([np.load(p) for p in xs])
    y = np.concatenate([np.load(p.with_name(p.name.replace("x-", "y-"))) for p in xs])
    return x, y


def submission(variant: str, data: dict[str, Path], loader_workers: int) -> dict[str, Any]:
    if variant == "uploaded":
        return {"train": arrays(data["npy"], "train"), "test": arrays(data["npy"], "test")}
    common = {"loader_workers": loader_workers, "prefetch_batches": 4}
    if variant == "npy":
        return {"data": "npy", "data_args": {"path": str(data["npy"])}, **common}
    if variant == "parquet":
        args = {"path": str(data["parquet"]), "x": "x", "y": "y"}
        return {"data": "parquet", "data_args": args, **common}
    return {"data": make_digits32, "data_args": {"root": str(data["npy"])}, **common}


def run(
    cluster: LocalCluster, variant: str, data: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    """One job of ``variant``: its time to first step, steady rate and peak RSS per role."""
    probe = cluster_sampler(cluster, loaders=True)
    t0, wall0 = time.monotonic(), time.time()
    with cluster.client() as client:
        job = client.submit(
            **JOB,
            **submission(variant, data, args.loader_workers),
            partitions=partitions_for(data),
            name=variant,
        )
        deadline = time.monotonic() + 1800
        while not job.metrics().steps:
            if time.monotonic() > deadline or job.info().state != "running":
                raise RuntimeError(f"{variant}: no step ({job.info().status_message})")
            time.sleep(0.2)
        first = time.monotonic()
        time.sleep(args.seconds)
        steps = job.metrics().steps
        job.cancel()
    probe.stop()
    t1 = time.monotonic()
    times = [s.unix_time - wall0 for s in steps]
    return {
        "variant": variant,
        "first_step_s": round(first - t0, 2),
        "steady_samples_per_s": round(steady_rate(times, [s.samples for s in steps]) or 0, 1),
        "steps": len(steps),
        "peak_rss_mb": {
            role: round(probe.peak(role, t0, t1) / 1024, 1)
            for role in ("coordinator", "shard", "worker", "loader", "client")
        },
    }


def source_of(variant: str, data: dict[str, Path]) -> DataSource:
    if variant == "augmented":
        return FunctionSource(make_digits32, "make_digits32", {"root": str(data["npy"])})
    return BUILTIN[variant]({"path": str(data[variant]), "x": "x", "y": "y"})


def loader_alone(variant: str, data: dict[str, Path], loader_workers: int, n: int = 40) -> float:
    """Samples/s of reading a lease's batches with nothing else to do (no training)."""
    source = source_of(variant, data)
    samples = source.open("train")
    block = block_rows(samples)
    plan = batches(len(samples), partitions_for(data), 0, 0, BATCH, SEED, block)[:n]
    reader = SplitLoader(samples, source.seeds_samples, SEED, LoaderSettings(loader_workers, 4))
    try:
        started = time.perf_counter()
        count = sum(len(y) for _, y in reader.read(plan, (1, 0, 0)))
        return round(count / (time.perf_counter() - started), 1)
    finally:
        reader.close()


def compute_alone(n: int = 20) -> float:
    """Samples/s of the model's forward and backward on in-memory batches, one thread."""
    torch.set_num_threads(1)
    model = SmallCNN()
    x, y = torch.randn(BATCH, 1, 32, 32), torch.randint(0, 10, (BATCH,))
    started = time.perf_counter()
    for _ in range(n):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    return round(n * BATCH / (time.perf_counter() - started), 1)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| MB | data | first step s | samples/s | vs uploaded | loader alone | peak RSS MB: "
        "coordinator / shard / worker / loader / client |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = r["peak_rss_mb"]
        lines.append(
            f"| {r['megabytes']} | {r['variant']} | {r['first_step_s']} | "
            f"{r['steady_samples_per_s']} | {r.get('vs_uploaded', '')} | "
            f"{r.get('loader_alone', '')} | {rss['coordinator']} / {rss['shard']} / "
            f"{rss['worker']} / {rss['loader']} / {rss['client']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,2200", help="MB of training data, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="training measured per run")
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    compute = compute_alone()
    env = {"PSC_HEARTBEAT_SECONDS": "0.5", "PSC_TORCH_THREADS": "1"}
    for megabytes in [int(s) for s in args.sizes.split(",")]:
        data = make_data(megabytes)
        with (
            tempfile.TemporaryDirectory() as state,
            LocalCluster(shards=1, workers=1, state_dir=state, env=env) as cluster,
        ):
            cluster.wait_for_workers(1, timeout=120)
            for variant in args.variants.split(","):
                r = {"megabytes": megabytes, **run(cluster, variant, data, args)}
                if variant != "uploaded":
                    r["loader_alone"] = loader_alone(variant, data, args.loader_workers)
                print(json.dumps(r), flush=True)
                rows.append(r)
        base = next(
            (r for r in rows if r["megabytes"] == megabytes and r["variant"] == "uploaded"), None
        )
        for r in rows:
            if base and r["megabytes"] == megabytes:
                r["vs_uploaded"] = round(
                    r["steady_samples_per_s"] / base["steady_samples_per_s"], 3
                )
    result = {
        "machine": machine(),
        "compute_alone_samples_per_s": compute,
        "rows": rows,
        "args": vars(args),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(result, indent=2))
    print(f"compute alone (one thread): {compute} samples/s")
    print(table(rows))


if __name__ == "__main__":
    main()
