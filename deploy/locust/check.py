"""Judge a locust run: fail on any failed request, print the figures the issue asks for.

Reads ``<prefix>_stats.csv`` (and ``<prefix>_rss.json`` if the run sampled shard memory) of the
run, and of a single-user run for comparison if one is given. Prints failures, push latency
p50/p99 against the target, requests/s and pushed MB/s next to the single client's, shard RSS
at start and end, and writes them to ``<prefix>_summary.json``. Exits 1 if any request failed
or the run made no push at all (a run that did nothing must not pass).

    python deploy/locust/check.py bench/results/load --single bench/results/load_single
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from load_rss import WARMUP_SECONDS

PUSH_P99_TARGET_MS = 250.0


def read_stats(prefix: str) -> dict[str, dict[str, str]]:
    """Rows of ``<prefix>_stats.csv`` by request name ("Aggregated" for the total)."""
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: did locust run with --csv {prefix}?")
    with path.open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _num(row: dict[str, str], column: str) -> float:
    value = row.get(column, "")
    return float(value) if value not in ("", "N/A") else 0.0


def summarize(prefix: str) -> dict[str, Any]:
    rows = read_stats(prefix)
    total = rows.get("Aggregated", {})
    pushes = [row for name, row in rows.items() if name.startswith("Push ")]
    push = pushes[0] if pushes else {}
    push_rate = _num(push, "Requests/s")
    summary: dict[str, Any] = {
        "requests": int(_num(total, "Request Count")),
        "failures": int(_num(total, "Failure Count")),
        "requests_per_s": round(_num(total, "Requests/s"), 1),
        "push_name": push.get("Name", ""),
        "pushes": int(_num(push, "Request Count")),
        "push_per_s": round(push_rate, 1),
        # What a push carries (after compression), times pushes per second.
        "push_mb_per_s": round(push_rate * _num(push, "Average Content Size") / (1 << 20), 1),
        "push_p50_ms": _num(push, "50%"),
        "push_p99_ms": _num(push, "99%"),
        "by_name": {
            name: {
                "count": int(_num(row, "Request Count")),
                "failures": int(_num(row, "Failure Count")),
                "p50_ms": _num(row, "50%"),
                "p99_ms": _num(row, "99%"),
                "per_s": round(_num(row, "Requests/s"), 2),
            }
            for name, row in rows.items()
            if name != "Aggregated"
        },
    }
    rss_path = Path(f"{prefix}_rss.json")
    if rss_path.exists():
        summary["rss"] = json.loads(rss_path.read_text()).get("shards", {})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the --csv prefix of the run to judge")
    parser.add_argument("--single", default="", help="the --csv prefix of a one-user run")
    args = parser.parse_args(argv)
    run = summarize(args.prefix)
    single = summarize(args.single) if args.single else None
    lines = [
        f"requests: {run['requests']}, failed: {run['failures']}",
        f"{run['push_name'] or 'push'}: p50 {run['push_p50_ms']:g} ms, "
        f"p99 {run['push_p99_ms']:g} ms (target < {PUSH_P99_TARGET_MS:g} ms: "
        f"{'met' if run['push_p99_ms'] < PUSH_P99_TARGET_MS else 'MISSED'})",
        f"throughput: {run['requests_per_s']} req/s, {run['push_per_s']} pushes/s, "
        f"{run['push_mb_per_s']} MB/s pushed",
    ]
    if single is not None:
        lines.append(
            f"single client: {single['requests_per_s']} req/s, {single['push_per_s']} pushes/s, "
            f"{single['push_mb_per_s']} MB/s pushed, push p99 {single['push_p99_ms']:g} ms"
        )
        if single["push_per_s"]:
            ratio = run["push_per_s"] / single["push_per_s"]
            lines.append(f"pushes/s vs single client: {ratio:.2f}x")
            run["push_rate_vs_single"] = round(ratio, 2)
        run["single"] = {k: v for k, v in single.items() if k != "by_name"}
    for name, entry in run.get("rss", {}).items():
        warm = entry.get("growth_after_warmup_mb")
        lines.append(
            f"{name} RSS: start {entry.get('start_mb')} MB, end {entry.get('end_mb')} MB, "
            f"peak {entry.get('peak_mb')} MB"
            + (
                f", growth after {WARMUP_SECONDS:g} s warm-up {warm:+} MB"
                if warm is not None
                else ""
            )
        )
    print("\n".join(lines))
    Path(f"{args.prefix}_summary.json").write_text(json.dumps(run, indent=2) + "\n")
    problems = []
    if run["failures"]:
        problems.append(f"{run['failures']} requests failed (see {args.prefix}_failures.csv)")
    if not run["pushes"]:
        problems.append("no push was made")
    if single is not None and single["failures"]:
        problems.append(f"{single['failures']} requests of the single-client run failed")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
