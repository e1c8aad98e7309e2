"""Fault-tolerance bench: kill, restart and disturb parts of a local cluster mid-job.

Runs the scenarios of tests/faults on the digits job (3 workers, 2 shards, async, 12 epochs):
a worker SIGKILLed, the coordinator SIGKILLed and restarted, one shard behind a flaky link,
and a shard SIGKILLed and restarted (its durability depends on the shard's write-ahead log).
For each it records the time to detect the fault, the time to recover from it, the
acknowledged updates the shards lack afterwards (0 expected) and the final test accuracy,
and writes bench/results/faults.json and bench/results/faults.md.

    .venv/bin/python bench/faults.py [--only worker,coordinator,flaky,shard]

A scenario that fails (an exception, or a job that does not complete at the target) is
written as FAILED with the reason: never left out or faked.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults import scenarios  # noqa: E402
from tests.faults.scenarios import Outcome  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCENARIOS: dict[str, Callable[[Path], Outcome]] = {
    "worker": scenarios.worker_death,
    "coordinator": scenarios.coordinator_restart,
    "flaky": scenarios.flaky_shard,
    "shard": scenarios.shard_restart,
}


def run(name: str) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"psc-faults-{name}-") as tmp:
        try:
            outcome = SCENARIOS[name](Path(tmp))
            row = asdict(outcome)
            row["passed"] = outcome.passed
            row["error"] = ""
        except Exception as e:
            row = asdict(Outcome(name))
            row.update(passed=False, error=f"{type(e).__name__}: {e}")
            traceback.print_exc()
    row["key"] = name
    row["wall_seconds"] = round(time.monotonic() - started, 1)
    print(f"{name}: {row}", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "| scenario | time to detect (s) | time to recover (s) | updates lost | final accuracy "
        "| result |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lost = "-" if r["updates_lost"] is None else str(r["updates_lost"])
        result = "passed" if r["passed"] else f"FAILED {r['error'] or r['state']}".strip()
        lines.append(
            f"| {r['scenario']} | {num(r['detect_seconds'])} | {num(r['recover_seconds'])} "
            f"| {lost} | {num(r['final_accuracy'])} | {result} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; expected some of {sorted(SCENARIOS)}")
    rows = [run(n) for n in names]
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "heartbeat_seconds": scenarios.HEARTBEAT,
        "worker_timeout_seconds": 3 * scenarios.HEARTBEAT,
        "target_accuracy": scenarios.TARGET_ACCURACY,
        "scenarios": rows,
    }
    (RESULTS / "faults.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = table(rows)
    (RESULTS / "faults.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
