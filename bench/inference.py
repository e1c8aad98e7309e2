"""Batch inference: rows/s scored with 1, 2 and 4 workers against one PyTorch process on the
same model and rows, in the same run, and where the time goes.

Model: bench/inference_model.py's ScoringMLP (128 -> 1024 -> 1024 -> 10, 1.2M parameters,
1.16M multiply-adds a row), seeded random weights; ``--rows`` rows of 128 float32 features;
logits out (10 float32 a row).

- **One process**: the model in this process, ``eval()`` under ``no_grad``, ``--batch-size``
  rows a forward pass, with every core torch uses here and with one thread. Run right
  before each cluster job (the cluster idle), so that both sides meet the same load from
  whatever else runs on the machine; the ratio of each cluster row is to the one-process
  runs of its own window (the faster thread setting, medians).
- **The cluster**: a local cluster (1 shard, W workers; each worker's torch threads are
  cores // W, at least 1, as ``pscluster up --local`` sets them, so 4 workers on 2 cores
  share them; ``W:T`` in ``--workers`` forces T threads a worker), one small warm-up job,
  then ``--repeats`` predict jobs of the same model uploaded (``client.submit_predict(
  model=..., state=...)``), ``--partitions`` partitions. Each is timed from the call to the
  outputs in hand (*end to end*) and split: *submit* (the SDK's dry run and the upload of
  rows and model), *scoring* (the job accepted to completed: the workers' wall time), *fetch*
  (the outputs streamed to the client and assembled in input order). ``job.metrics()
  .predict_seconds`` says where the workers' time went, summed over the partitions:
  *load_model* (once per worker: plan, code, state), *read* (a partition's rows fetched
  from the coordinator), *score* (the forward passes), and the coordinator's *receive* (a
  partition's outputs uploaded to it and stored).

Every run's outputs are compared with the one-process outputs (max abs difference printed).
Rows of the table are medians over the repeats. Writes bench/results/inference.json and
prints a markdown table.

    .venv/bin/python bench/inference.py [--rows 100000] [--workers 1,2,4,1:1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import machine  # noqa: E402
from bench.inference_model import ScoringMLP  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.predict_job import POLL_SECONDS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}
PHASES = ("load_model", "read", "score", "receive")


def one_process(
    model: torch.nn.Module, x: torch.Tensor, batch: int, threads: int
) -> dict[str, Any]:
    """The plain PyTorch loop: seconds to score every row, and the outputs."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        with torch.no_grad():
            out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    return {"threads": threads, "seconds": seconds, "rows_per_s": len(x) / seconds, "out": out}


def cluster_run(
    cluster: LocalCluster, model: torch.nn.Module, x: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """One predict job, timed by phase."""
    with cluster.client() as client:
        started = time.perf_counter()
        job = client.submit_predict(
            model=ScoringMLP,
            state=model.state_dict(),
            data=x,
            batch_size=args.batch_size,
            partitions=args.partitions,
        )
        submitted = time.perf_counter()
        job.wait(timeout=args.timeout, poll=POLL_SECONDS)  # as Client.predict waits
        scored = time.perf_counter()
        out = job.predictions()
        fetched = time.perf_counter()
        phases = job.metrics().predict_seconds
    total = fetched - started
    return {
        "submit_s": submitted - started,
        "scoring_s": scored - submitted,
        "fetch_s": fetched - scored,
        "total_s": total,
        "rows_per_s": len(x) / total,
        "scoring_rows_per_s": len(x) / (scored - submitted),
        **{f"{p}_s": phases.get(p, 0.0) for p in PHASES},
        "out": out,
    }


def with_workers(
    setting: str, model: torch.nn.Module, x: np.ndarray, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The cluster runs of one setting ("W" or "W:T"), and the one-process runs beside them."""
    workers, _, threads = setting.partition(":")
    env = {**ENV, **({"PSC_TORCH_THREADS": threads} if threads else {})}
    xt = torch.from_numpy(x)
    alone: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as state,
        LocalCluster(shards=1, workers=int(workers), state_dir=state, env=env) as cluster,
    ):
        cluster.wait_for_workers(int(workers), timeout=120)
        cluster_run(cluster, model, x[:2000], args)  # warm-up: first imports, first calls
        for _ in range(args.repeats):
            for t in sorted({torch.get_num_threads(), 1}, reverse=True):
                alone.append(one_process(model, xt, args.batch_size, t))
            runs.append(cluster_run(cluster, model, x, args))
    return runs, alone


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in runs[0] if k != "out"]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def by_threads(alone: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    return {
        t: median_of([a for a in alone if a["threads"] == t])
        for t in sorted({a["threads"] for a in alone}, reverse=True)
    }


def table(alone: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| setting | rows/s end to end | x one process | rows/s scoring | submit s | "
        "scoring s | fetch s | load_model s | read s | score s | receive s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, b in by_threads(alone).items():
        lines.append(
            f"| one process, {t} thread(s) | {b['rows_per_s']:,.0f} | | | | "
            f"{b['seconds']:.2f} | | | | | |"
        )
    for setting, r in rows.items():
        m, best = r["median"], r["one_process_rows_per_s"]
        workers, _, threads = setting.partition(":")
        label = f"{workers} worker(s)" + (f", {threads} thread(s) each" if threads else "")
        lines.append(
            f"| {label} | {m['rows_per_s']:,.0f} | {m['rows_per_s'] / best:.2f} | "
            f"{m['scoring_rows_per_s']:,.0f} | {m['submit_s']:.2f} | {m['scoring_s']:.2f} | "
            f"{m['fetch_s']:.2f} | " + " | ".join(f"{m[f'{p}_s']:.2f}" for p in PHASES) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,4,1:1", help="W or W:T (T threads a worker)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = ScoringMLP().eval()
    x = np.random.default_rng(0).normal(size=(args.rows, 128)).astype(np.float32)
    rows: dict[str, dict[str, Any]] = {}
    alone: list[dict[str, Any]] = []
    for setting in args.workers.split(","):
        runs, beside = with_workers(setting, model, x, args)
        reference = beside[0]["out"]
        for r in [*runs, *beside]:
            r["max_abs_diff"] = float((r.pop("out") - reference).abs().max())
        best = max(b["rows_per_s"] for b in by_threads(beside).values())
        rows[setting] = {"median": median_of(runs), "one_process_rows_per_s": best, "runs": runs}
        alone += beside
        m = rows[setting]["median"]
        print(
            f"{setting}: {m['rows_per_s']:,.0f} rows/s end to end (one process beside it: "
            f"{best:,.0f})",
            flush=True,
        )
    print(table(alone, rows))
    diff = max(r["max_abs_diff"] for r in [*alone, *(q for v in rows.values() for q in v["runs"])])
    print(f"max abs difference from one process: {diff}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "one_process": alone,
        "clusters": rows,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
