"""What a lease costs: time per epoch and to the target against the batches a lease holds.

A window of local steps ends at its lease's end, and every lease pays a progress report, a
CompleteTask, an AcquireTask, its partition's rows and batch plan on top of its windows;
under sync the other members wait at the next barrier meanwhile. The digits job (1,437 rows,
batch 32) in the coordinator's default 12 partitions gives leases of 3-4 batches; in 4, of
11-12. Each setting runs at both, interleaved, on one local cluster of 2 shards and 4 equal
workers (bench/auto.py's), at lr 0.05 and 0.2: sync with 8 local steps and auto (whose
windows the small leases cut to 3-4 batches), and sync with 4 local steps and async with a
push per step, whose windows are the same at either size, so that what differs is the
leases' own cost. The figures are the median seconds to 95% test accuracy and the seconds per
epoch over every run.

    nice .venv/bin/python bench/lease_size.py [--repeats 5]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auto import run, start  # noqa: E402
from bench.common import machine  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402

PARTITIONS = (12, 4)
LRS = (0.05, 0.2)
SETTINGS: dict[str, dict[str, Any]] = {
    "sync, 8 local": {"mode": "sync", "local_steps": 8},
    "auto": {"mode": "auto", "staleness": 0},
    # The same windows at either size (3-4 batches: one per small lease, three per large
    # one; a batch each): what is left between the two sizes is the leases' own cost.
    "sync, 4 local": {"mode": "sync", "local_steps": 4},
    "async": {"mode": "async"},
}


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "median_to_target_s": round(statistics.median(r["to_target_s"] for r in runs), 3),
        "mean_epochs": round(statistics.mean(r["epochs"] for r in runs), 1),
        "seconds_per_epoch": round(
            sum(r["to_target_s"] for r in runs) / sum(r["epochs"] for r in runs), 3
        ),
        "reached": sum(r["reached"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/lease_size.json")
    parser.add_argument(
        "--without-cache",
        action="store_true",
        help="also on a second cluster whose workers fetch each lease's rows again "
        "(PSC_DATA_CACHE_MB=0), interleaved",
    )
    args = parser.parse_args()
    base = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    base["epochs"] = 20
    raw: dict[str, list[dict[str, Any]]] = {}
    variants: dict[str, dict[str, str]] = {"": {}}
    if args.without_cache:
        variants[" (no data cache)"] = {"PSC_DATA_CACHE_MB": "0"}
    with tempfile.TemporaryDirectory(prefix="psc-lease-") as tmp:
        clusters = {
            k: start(Path(tmp) / str(i), None, env) for i, (k, env) in enumerate(variants.items())
        }
        try:
            for seed in range(args.repeats):
                for lr in LRS:
                    for parts in PARTITIONS:
                        for name, setting in SETTINGS.items():
                            for variant, cluster in clusters.items():
                                optimizer = {**base["optimizer"], "lr": lr}
                                job = {**base, **setting, "optimizer": optimizer}
                                job.update(partitions=parts, seed=seed, name=name)
                                result = run(cluster, job, halfway=False)
                                key = f"lr {lr}, {parts} partitions: {name}{variant}"
                                raw.setdefault(key, []).append(result)
                                print(key, result, flush=True)
        finally:
            for cluster in clusters.values():
                cluster.stop()
    rows = {key: summary(runs) for key, runs in raw.items()}
    out = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"nice python bench/lease_size.py --repeats {args.repeats}"
        + (" --without-cache" if args.without_cache else ""),
        "summary": rows,
        "runs": raw,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("\n| run | to 95% (median s) | epochs (mean) | s per epoch | reached |")
    print("|---|---|---|---|---|")
    for key, row in rows.items():
        print(
            f"| {key} | {row['median_to_target_s']} | {row['mean_epochs']} | "
            f"{row['seconds_per_epoch']} | {row['reached']}/{args.repeats} |"
        )


if __name__ == "__main__":
    main()
