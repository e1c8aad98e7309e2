"""SSP staleness sweep: accuracy, throughput and time to target for bounds s = 0..8 and async.

The digits example job (examples/digits.yaml: SGD lr 0.05 momentum 0.9, batch 32, 20
epochs) on one local cluster of 2 shards and 4 workers, submitted once per bound (``ssp`` with
s in {0, 1, 2, 4, 8}, and ``async`` as s = infinity), ``--repeats`` times, the bounds
interleaved so that load from other work on the machine hits them alike. Per run: final test
accuracy, wall time (the job's start to finish), training samples/s, time from the job's start
to the first per-epoch evaluation at >= 0.95, and the version staleness of applied pushes
(updates applied to a shard between a worker's pull and its push; summed over shards): mean
and p99. The SSP paper's trade-off (Ho et al., NIPS 2013): a larger bound waits less, so more
samples/s, but each gradient is computed on older parameters, so more samples to a target.

Straggler mitigation is off (``stragglers={"no_mitigation": True}``) so that the bound alone
decides who waits. The four workers run at the same speed unless ``--slowdown F`` makes one of
them F times slower (``PSC_SLOWDOWN``): the SSP paper's setting is a cluster whose workers do
not keep pace, which is when a bound has something to hold back.

``--staleness-lr`` adds a row ``async + staleness-aware LR`` (each push divided by its
staleness + 1) when the SDK's ``Client.submit`` has the ``staleness_aware_lr`` keyword.
Writes bench/results/staleness.json and staleness.png (staleness-slow<F>.* with --slowdown).

    .venv/bin/python bench/staleness.py [--repeats 1] [--epochs 20] [--staleness-lr]
                                        [--slowdown F]
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots  # noqa: E402
from bench.common import machine  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.metrics import JobMetrics  # noqa: E402
from pscluster.client.sdk import Client  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET = 0.95
WORKERS = 4
SHARDS = 2


@dataclass(frozen=True)
class Setting:
    label: str
    mode: str
    bound: int | None  # None: no bound (async)
    staleness_aware_lr: bool = False


SETTINGS = [
    *(Setting(f"ssp s={s}", "ssp", s) for s in (0, 1, 2, 4, 8)),
    Setting("async (s=inf)", "async", None),
]
AWARE = Setting("async + staleness-aware LR", "async", None, staleness_aware_lr=True)


def sdk_has_staleness_lr() -> bool:
    return "staleness_aware_lr" in inspect.signature(Client.submit).parameters


def percentile(histogram: dict[int, int], q: float) -> int | None:
    """The smallest value at or below which a fraction ``q`` of the counts lie."""
    total = sum(histogram.values())
    if total == 0:
        return None
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= q * total:
            return value
    return max(histogram)


def summarize(
    setting: Setting, repeat: int, started: float, finished: float, metrics: JobMetrics
) -> dict[str, Any]:
    curve = [[round(e.unix_time - started, 2), round(e.test_accuracy, 4)] for e in metrics.epochs]
    reached = [t for t, acc in curve if acc >= TARGET]
    samples = sum(s.samples for s in metrics.steps)
    wall = finished - started
    stale = {int(k): int(v) for k, v in metrics.staleness.items()}
    return {
        "label": setting.label,
        "mode": setting.mode,
        "bound": setting.bound,
        "staleness_aware_lr": setting.staleness_aware_lr,
        "repeat": repeat,
        "accuracy": metrics.final_accuracy,
        "wall_s": round(wall, 2),
        "samples": samples,
        "samples_per_s": round(samples / wall, 1) if wall > 0 else None,
        "time_to_target": reached[0] if reached else None,
        "staleness_mean": round(metrics.mean_staleness, 3) if metrics.mean_staleness else 0.0,
        "staleness_p99": percentile(stale, 0.99),
        "staleness_max": max(stale) if stale else None,
        "staleness_histogram": stale,
        "clock_staleness_histogram": {int(k): int(v) for k, v in metrics.clock_staleness.items()},
        "pushes_applied": metrics.pushes_applied,
        "pushes_by_worker": dict(metrics.pushes_by_worker),
        "pushes_rejected": metrics.pushes_rejected,
        "curve": curve,
    }


def run(
    cluster: LocalCluster, base: dict[str, Any], setting: Setting, repeat: int
) -> dict[str, Any]:
    kwargs = {
        **base,
        "mode": setting.mode,
        "staleness": setting.bound or 0,
        "seed": repeat,
        "stragglers": {"no_mitigation": True},
    }
    kwargs.pop("staleness_aware_lr", None)
    if setting.staleness_aware_lr:
        kwargs["staleness_aware_lr"] = True
    with cluster.client() as client:
        job = client.submit(**kwargs)
        info = job.wait(timeout=900)
        metrics = job.metrics()
    if info.started_unix is None or info.finished_unix is None:
        raise RuntimeError(f"job {job.id} completed without start and finish times: {info}")
    return summarize(setting, repeat, info.started_unix, info.finished_unix, metrics)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: means over repeats (time to target over the runs that got there)."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        reached = [r["time_to_target"] for r in mine if r["time_to_target"] is not None]

        def mean(key: str, of: list[dict[str, Any]] = mine) -> float:
            return statistics.fmean(r[key] for r in of)

        rows.append(
            {
                "label": label,
                "runs": len(mine),
                "accuracy": mean("accuracy"),
                "accuracy_min": min(r["accuracy"] for r in mine),
                "wall_s": mean("wall_s"),
                "samples_per_s": mean("samples_per_s"),
                "time_to_target": statistics.fmean(reached) if reached else None,
                "reached": len(reached),
                "staleness_mean": mean("staleness_mean"),
                "staleness_p99": max(r["staleness_p99"] or 0 for r in mine),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| setting | runs | final test accuracy | wall (s) | samples/s | time to {TARGET} (s) "
        "| staleness mean | staleness p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttt = "never" if r["time_to_target"] is None else f"{r['time_to_target']:.1f}"
        if r["time_to_target"] is not None and r["reached"] < r["runs"]:
            ttt += f" ({r['reached']}/{r['runs']} reached)"
        acc = f"{r['accuracy']:.4f}"
        if r["runs"] > 1:
            acc += f" (min {r['accuracy_min']:.4f})"
        lines.append(
            f"| {r['label']} | {r['runs']} | {acc} | {r['wall_s']:.1f} | "
            f"{r['samples_per_s']:.0f} | {ttt} | {r['staleness_mean']:.2f} | "
            f"{r['staleness_p99']} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (default 1)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per job (default 20)")
    parser.add_argument(
        "--staleness-lr",
        action="store_true",
        help="add an 'async + staleness-aware LR' row (needs Client.submit(staleness_aware_lr))",
    )
    parser.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        help="make one of the workers this many times slower (default 1: all alike)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1 or args.epochs < 1:
        parser.error("--repeats and --epochs must be at least 1")
    if args.slowdown < 1:
        parser.error(f"--slowdown must be >= 1 (1: no slow worker), got {args.slowdown}")
    return args


def chosen_settings(staleness_lr: bool) -> list[Setting]:
    settings = list(SETTINGS)
    if staleness_lr:
        if sdk_has_staleness_lr():
            settings.append(AWARE)
        else:
            print(
                "note: Client.submit has no staleness_aware_lr keyword in this checkout; "
                "skipping the 'async + staleness-aware LR' row",
                flush=True,
            )
    return settings


def sweep(
    settings: list[Setting], base: dict[str, Any], repeats: int, slowdown: float
) -> list[dict[str, Any]]:
    """Every setting ``repeats`` times, interleaved, on one cluster (one worker ``slowdown``
    times slower when above 1)."""
    slow = slowdown > 1
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as state,
        LocalCluster(
            shards=SHARDS,
            workers=WORKERS - 1 if slow else WORKERS,
            state_dir=state,
            env={"PSC_HEARTBEAT_SECONDS": "0.5"},
        ) as cluster,
    ):
        if slow:
            cluster.add_worker(
                wait=True, env={"PSC_SLOWDOWN": f"{slowdown:g}", "PSC_WORKER_ID": "slow"}
            )
        for repeat in range(repeats):
            for setting in settings:
                r = run(cluster, base, setting, repeat)
                runs.append(r)
                brief = {
                    k: v
                    for k, v in r.items()
                    if k not in ("curve", "staleness_histogram", "clock_staleness_histogram")
                }
                print(json.dumps(brief), flush=True)
    return runs


def main() -> None:
    args = parse_args()
    slow = args.slowdown > 1
    out_path: Path = args.out or RESULTS / (
        f"staleness-slow{args.slowdown:g}.json" if slow else "staleness.json"
    )
    settings = chosen_settings(args.staleness_lr)
    job = load_job_file(ROOT / "examples" / "digits.yaml")
    base = {**job.submit_kwargs(), "epochs": args.epochs}
    runs = sweep(settings, base, args.repeats, args.slowdown)
    rows = aggregate(runs)
    title = f"SSP bound s, digits, {WORKERS} workers" + (
        f" (one {args.slowdown:g}x slower)" if slow else " (all alike)"
    )
    out = {
        "machine": machine(),
        "setup": f"digits job (examples/digits.yaml), {SHARDS} shards, {WORKERS} workers"
        + (f" (one at PSC_SLOWDOWN={args.slowdown:g})" if slow else "")
        + f", {args.epochs} epochs, straggler mitigation off, one local cluster, "
        "seed = repeat index",
        "slowdown": args.slowdown,
        "title": title,
        "command": " ".join(["python", "bench/staleness.py", *sys.argv[1:]]),
        "target": TARGET,
        "summary": rows,
        "runs": runs,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    png = out_path.with_suffix(".png")
    plots.staleness(runs, TARGET, png, title)
    print(table(rows))
    print(f"wrote {out_path} and {png}")


if __name__ == "__main__":
    main()
