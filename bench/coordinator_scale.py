"""The coordinator at 50, 200 and 500 workers: lease throughput, RPC latency, liveness.

A real cluster (a coordinator and 2 shards, started by ``LocalCluster`` from a source tree,
``--tree``) runs one async job of 2,000 one-batch partitions (a 4-2 linear model, 4,000
rows, 10,000 epochs: it outlasts any run). N simulated workers (bench/sim_workers.py) call
the coordinator exactly as pscluster/worker/agent.py does, over real gRPC, from ``--procs``
OS processes (N / procs workers each, one thread and one channel per worker plus its
heartbeat thread), with no shard traffic: the leases cost the workers nothing, so the
coordinator's throughput is the limit. After every worker registered and ``--warmup``
seconds, ``--seconds`` are measured: leases completed per second, AcquireTask latency of the
calls that returned a lease (the time the coordinator says it held the call taken out),
CompleteTask / Heartbeat / ReportProgress latency, heartbeats refused, workers declared dead
while heartbeating, RESOURCE_EXHAUSTED per RPC, and the coordinator's CPU and RSS (from
/proc). Every scenario starts a fresh cluster.

``--baseline REV`` checks REV out into a temporary git worktree and runs each scenario
against it first, then against ``--tree``: before and after, same machine, same minutes;
both trees run on this checkout's venv, and the SDK and the simulated workers are this
checkout's. ``--kill-at S`` SIGKILLs the coordinator S seconds into the last scenario's
window, restarts it on the same state directory, and checks that no lease whose CompleteTask
was acknowledged is leased again in the same epoch. Writes bench/results/coordinator_scale.json
and .png and prints the tables.

    .venv/bin/python bench/coordinator_scale.py --baseline HEAD --workers 50,200,500 --seconds 60
    .venv/bin/python bench/coordinator_scale.py --workers 200 --seconds 40 --kill-at 15
    .venv/bin/python bench/coordinator_scale.py --quick     # 20 workers, 5 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import coordinator_scale_figures as figs  # noqa: E402
from bench import plots_coordinator  # noqa: E402
from bench.coordinator_scale_scenario import (  # noqa: E402
    EPOCHS,
    PARTITIONS,
    ROWS,
    SHARDS,
    scenario,
)
from bench.coordinator_scale_setup import tree_info, worktree  # noqa: E402
from pscluster.config import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# The issue's figures (measured earlier, same method, its own machine).
ISSUE = [
    {"workers": 50, "leases_per_s": 56, "acquire_p50_ms": 443, "acquire_p99_ms": 645,
     "heartbeats_refused_pct": 0, "false_death_workers": 0},
    {"workers": 200, "leases_per_s": 26, "acquire_p50_ms": 2300, "acquire_p99_ms": 3000,
     "heartbeats_refused_pct": 59, "false_death_workers": 77},
    {"workers": 500, "leases_per_s": 15, "acquire_p50_ms": 2200, "acquire_p99_ms": 2800,
     "heartbeats_refused_pct": 78, "false_death_workers": 496},
]  # fmt: skip
ISSUE_TABLE = """\
| workers | lease ops/s | AcquireTask p50 / p99 | heartbeats refused | workers declared dead \
while heartbeating |
|---|---|---|---|---|
| 50 | 56 | 443 / 645 ms | 0% | 0 |
| 200 | 26 | 2.3 / 3.0 s | 59% | 68-77 |
| 500 | 15 | 2.2 / 2.8 s | 78% | 496 of 500 |"""
TARGETS = {
    "workers": 500,
    "leases_per_s": ">= 5x today's",
    "acquire_p99_ms": "< 100 (held time excluded)",
    "heartbeats_refused": 0,
    "false_deaths": 0,
    "finished_leases_lost_on_kill": 0,
}


def summary_line(r: dict[str, Any]) -> str:
    f = r["figures"]
    a = f["acquire_lease"]
    return (
        f"{r['tree']:>7} N={r['workers']:<4} {f['leases_per_s']:7.1f} leases/s  acquire "
        f"{figs.span(a['p50_ms'], a['p99_ms'])}  hb refused {f['heartbeats_refused_pct']:.0f}%  "
        f"dead {f['false_death_workers']}  coordinator {r['cpu']['coordinator_pct']:.0f}%  "
        f"sims {r['cpu']['sims_pct']:.0f}%  lost {r['lost']['lost']}"
    )


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """after / before per worker count, when both ran."""
    by = {(r["tree"], r["workers"]): r for r in rows}
    out = []
    for (tree, n), after in by.items():
        before = by.get(("before", n))
        if tree != "after" or before is None:
            continue
        b, a = before["figures"], after["figures"]
        out.append(
            {
                "workers": n,
                "leases_per_s": [b["leases_per_s"], a["leases_per_s"]],
                "leases_ratio": round(a["leases_per_s"] / max(b["leases_per_s"], 1e-9), 2),
                "acquire_p99_ms": [b["acquire_lease"]["p99_ms"], a["acquire_lease"]["p99_ms"]],
                "heartbeats_refused_pct": [
                    b["heartbeats_refused_pct"],
                    a["heartbeats_refused_pct"],
                ],
                "false_death_workers": [b["false_death_workers"], a["false_death_workers"]],
            }
        )
    return out


def parse_args() -> argparse.Namespace:
    """The options, with --quick's defaults filled in; ``workers`` becomes a list of ints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        default=str(ROOT),
        help="source tree: a path, or a git revision (checked out in a temporary "
        "worktree); default: this checkout",
    )
    parser.add_argument("--baseline", help="a git revision to run first, as 'before'")
    parser.add_argument("--workers", help="comma-separated worker counts (default 50,200,500)")
    parser.add_argument("--seconds", type=float, help="measured seconds per scenario (60)")
    parser.add_argument("--warmup", type=float, help="seconds after registration (10)")
    parser.add_argument("--procs", type=int, default=4, help="simulated-worker processes")
    parser.add_argument(
        "--task-seconds",
        type=float,
        default=0.0,
        help="mean simulated training time of a train lease, uniform in 0.5-1.5x (0: back to "
        "back, the peak rate; e.g. 3: 500 workers offer ~170 leases/s, for latency at a "
        "sustained load)",
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        help="SIGKILL the coordinator this many s "
        "into the last scenario's window, restart it, check no lease is lost",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the coordinator's thread stacks in each window (bench/stack_sampler.py)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 workers, 5 s")
    parser.add_argument("--out", type=Path, help="default bench/results/coordinator_scale.json")
    args = parser.parse_args()  # fmt: skip
    quick = args.quick
    args.workers = [int(n) for n in (args.workers or ("20" if quick else "50,200,500")).split(",")]
    args.seconds = args.seconds or (5.0 if quick else 60.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if quick else 10.0)
    args.out = args.out or RESULTS / (
        "coordinator_scale-quick.json" if quick else "coordinator_scale.json"
    )
    if min(args.workers) < 1 or args.procs < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--workers, --procs and --seconds must be positive, --warmup >= 0")
    if args.kill_at is not None and not 0 < args.kill_at < args.seconds:
        parser.error("--kill-at must be inside the window: 0 < kill-at < --seconds")
    return args


def trees_under_test(
    args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """The trees by label ('before' first, then 'after'; or just 'tree') and what each is,
    printed; a git revision is checked out in a worktree that ``stack`` removes."""
    tree = Path(args.tree).resolve()
    if not tree.is_dir():
        tree = stack.enter_context(worktree(args.tree))
    trees = {"after" if args.baseline else "tree": tree}
    if args.baseline:
        trees = {"before": stack.enter_context(worktree(args.baseline)), **trees}
    revs = {"before": args.baseline, "after": args.tree, "tree": args.tree}
    info = {label: {**tree_info(path), "rev": revs[label]} for label, path in trees.items()}
    for label, i in info.items():
        print(f"{label}: {i['path']} at {i['commit'][:10]} {i['subject']!r}"
              + (f", uncommitted: {i['uncommitted']}" if i["uncommitted"] else ""))  # fmt: skip
    return trees, info


def run_scenarios(trees: dict[str, Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # Each worker count against every tree in turn (before first), so that load drifting
    # on the machine hits both alike.
    for k, n in enumerate(args.workers):
        for label, path in trees.items():
            kill = args.kill_at if k == len(args.workers) - 1 else None
            row = scenario(label, path, n, args, kill)
            print(summary_line(row), flush=True)
            rows.append(row)
    return rows


def setup(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    return {
        "workers": args.workers,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "sim_processes": args.procs,
        "task_seconds": args.task_seconds,
        "simulators": "one thread and one channel (own TCP connection) per worker, plus "
        "its heartbeat thread; heartbeat deadline max(1 s, 2 s) as the agent's, 10 s others",
        "job": {
            "rows": ROWS,
            "partitions": PARTITIONS,
            "batch_size": ROWS // PARTITIONS,
            "epochs": EPOCHS,
            "mode": "async",
            "shards": SHARDS,
            "model": "Linear(4, 2)",
        },
        "defaults": {
            k: getattr(settings, k)
            for k in (
                "heartbeat_seconds",
                "worker_timeout_seconds",
                "acquire_hold_seconds",
                "grpc_threads",
            )
        },
    }


def print_tables(rows: list[dict[str, Any]]) -> None:
    print("\nreported in the issue:")
    print(ISSUE_TABLE)
    print("\nmeasured:")
    print(figs.issue_table(rows))
    print()
    print(figs.detail_table(rows))
    if any(r.get("kill") for r in rows):
        print()
        print(figs.kill_table(rows))


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        trees, info = trees_under_test(args, stack)
        rows = run_scenarios(trees, args)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "command": " ".join(["python", "bench/coordinator_scale.py", *sys.argv[1:]]),
        "quick": args.quick,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "setup": setup(args),
        "trees": info,
        "issue": ISSUE,
        "targets": TARGETS,
        "rows": rows,
        "comparison": comparison(rows),
    }
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = out.with_suffix(".png")
    plots_coordinator.scale(rows, ISSUE, png)
    print_tables(rows)
    print(f"\nwrote {out} and {png} ({result['minutes']} min)")


if __name__ == "__main__":
    main()
