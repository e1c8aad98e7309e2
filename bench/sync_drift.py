"""How often a sync job's shards are half a step apart (docs/architecture.md, "Moving a
running job between shards"): a newcomer's roster that reached one shard before a step closed
there and another after leaves each shard's open step waiting for different workers.

A local cluster (2 shards, 2 workers) trains the digits example under sync, 12 partitions
(a roster change at every lease's start and end), with every worker slowed down by
``PSC_SLOWDOWN`` so that a step takes longer. Both shards' ``GetJobStats`` are read together
every ~10 ms while both workers are members; the figure is the share of readings where the
two shards answered different versions, and the longest run of such readings. A drift shows
as long runs; a step that closed between the two shards' answers as single readings.

    nice .venv/bin/python bench/sync_drift.py [--slowdowns 1,5,10,40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auto import ENV  # noqa: E402
from bench.common import machine  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402
from pscluster.config import Settings  # noqa: E402
from pscluster.shard_client import ShardClient  # noqa: E402
from pscluster.v1 import common_pb2  # noqa: E402

SAMPLE_SECONDS = 0.01
ENDED = ("completed", "failed", "cancelled")
# (version, members) of each shard at one reading
Reading = tuple[tuple[int, tuple[str, ...]], ...]


def sample(cluster: LocalCluster, job: dict[str, Any]) -> tuple[list[Reading], float, int]:
    """Submit ``job`` and read both shards' stats until it ends: the readings, the seconds
    it trained and its steps."""
    shards = ShardClient(Settings(host="127.0.0.1"))
    readings: list[Reading] = []
    try:
        with cluster.client() as client:
            handle = client.submit(**job)
            began = time.perf_counter()
            while handle.info().state not in ENDED:
                stats = shards.job_stats(cluster.shard_addresses, handle.id)
                if all(isinstance(s, common_pb2.ShardJobStats) for s in stats):
                    readings.append(
                        tuple((s.version, tuple(sorted(s.members))) for s in stats)  # type: ignore[union-attr]
                    )
                time.sleep(SAMPLE_SECONDS)
            info = handle.wait(timeout=60)
            return readings, time.perf_counter() - began, info.steps
    finally:
        shards.close()


def summary(readings: list[Reading], seconds: float, steps: int) -> dict[str, Any]:
    """The share of readings (both workers members on both shards) at different versions,
    and the longest run of them."""
    both = [r for r in readings if len(r[0][1]) == 2 and r[0][1] == r[1][1]]
    runs, run = [0], 0
    for r in both:
        run = run + 1 if r[0][0] != r[1][0] else 0
        runs.append(run)
    apart = sum(r[0][0] != r[1][0] for r in both)
    return {
        "ms_per_step": round(1000 * seconds / max(1, steps), 1),
        "readings": len(both),
        "versions_differ": round(apart / max(1, len(both)), 4),
        "longest_run": max(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slowdowns", default="1,5,10,40")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sync_drift.json")
    args = parser.parse_args()
    base = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    job = {**base, "mode": "sync", "staleness": 0, "epochs": 2, "partitions": 12, "shards": 2}
    rows: dict[str, Any] = {}
    for slowdown in args.slowdowns.split(","):
        env = {**ENV, "PSC_SLOWDOWN": slowdown}
        with (
            tempfile.TemporaryDirectory(prefix="psc-drift-") as tmp,
            LocalCluster(shards=2, workers=2, state_dir=Path(tmp), env=env) as cluster,
        ):
            rows[f"slowdown {slowdown}"] = summary(*sample(cluster, job))
        print(f"slowdown {slowdown}: {rows[f'slowdown {slowdown}']}", flush=True)
    out = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"nice python bench/sync_drift.py --slowdowns {args.slowdowns}",
        "summary": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
