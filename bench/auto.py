"""Mode "auto" against every fixed consistency setting: time to the target accuracy.

Four scenarios on local clusters of real processes (2 shards, 4 workers): four equal workers;
one worker 3x slower (``PSC_SLOWDOWN=3``); one 5x slower (``PSC_SLOWDOWN=5``); and four equal
workers of which one becomes 5x slower halfway (once the job has finished ``HALF_EPOCHS``
epochs: half the epochs the equal workers need to reach the target). That last slowdown is
made from outside, as a throttled machine would be: the bench stops the worker's process for
80% of every 50 ms (SIGSTOP / SIGCONT), so everything it does, compute and transfers, takes
five times as long.

On each, two jobs run in sync, sync with one backup worker, ssp (s=2), async, sync and async
with 8 local steps per push (local SGD), and auto, interleaved (in an order shuffled per
repeat, a second apart), ``--repeats`` times each: the
digits job as examples/digits.yaml has it (lr 0.05, momentum 0.9), where staleness costs
nothing measurable, and the same job at lr 0.2, where it does (under async or ssp s=2 its
loss wanders near where it began and it never reaches the target, while sync does in 3-6
epochs): the best fixed setting then differs between the two jobs, and a policy has to find
out which case it is in. Time to target is from the
job's start to its first per-epoch evaluation at or above ``TARGET`` test accuracy; the job is
cancelled there (the rest of its epochs would measure nothing). A run that never reaches it
counts with its whole training time and is marked. The figures per setting are medians.

    nice .venv/bin/python bench/auto.py [--repeats 3] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench.auto_stats import summarise, table, verdicts  # noqa: E402
from bench.common import machine  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402

TARGET = 0.95
HALF_EPOCHS = 3
SETTLE_SECONDS = 1.0
SLOW = "slow"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5", "PSC_WORKER_TIMEOUT_SECONDS": "3"}
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("sync", {"mode": "sync"}),
    ("sync + 1 backup", {"mode": "sync", "backup_workers": 1}),
    ("ssp s=2", {"mode": "ssp", "staleness": 2}),
    ("async", {"mode": "async"}),
    # Local SGD, 8 steps per push: the most auto takes (pscluster/coordinator/auto_local.py).
    ("sync, 8 local", {"mode": "sync", "local_steps": 8}),
    ("async, 8 local", {"mode": "async", "local_steps": 8}),
    ("auto", {"mode": "auto", "staleness": 0}),
]
NAMES = [n for n, _ in SETTINGS]
# job -> what it changes in examples/digits.yaml (the optimizer's learning rate)
JOBS: dict[str, float] = {"digits": 0.05, "digits lr 0.2": 0.2}
# scenario -> (the slow worker's PSC_SLOWDOWN, or None: none; slowed halfway by the bench)
SCENARIOS: dict[str, tuple[float | None, bool]] = {
    "4 equal": (None, False),
    "one 3x straggler": (3.0, False),
    "one 5x straggler": (5.0, False),
    "5x slower halfway": (None, True),
}


class Throttle:
    """Run a process 1/``factor`` of the time (SIGSTOP for the rest of every period)."""

    def __init__(self, pid: int, factor: float, period: float = 0.05) -> None:
        self.pid, self.run_s = pid, period / factor
        self.stop_s = period - self.run_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            time.sleep(self.stop_s)
            os.kill(self.pid, signal.SIGCONT)
            time.sleep(self.run_s)

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        os.kill(self.pid, signal.SIGCONT)


def start(path: Path, slowdown: float | None, env: dict[str, str] | None = None) -> LocalCluster:
    cluster = LocalCluster(shards=2, workers=3, state_dir=path, env={**ENV, **(env or {})})
    cluster.start()
    cluster.wait_for_workers(3, timeout=300)
    slow = {"PSC_WORKER_ID": SLOW}
    if slowdown is not None:
        slow["PSC_SLOWDOWN"] = str(slowdown)
    cluster.add_worker(wait=True, env=slow)
    return cluster


def run(cluster: LocalCluster, job: dict[str, Any], halfway: bool) -> dict[str, Any]:
    slow = next(w for w in cluster.workers if w.env.get("PSC_WORKER_ID") == SLOW)
    throttle: Throttle | None = None
    with cluster.client() as client:
        handle = client.submit(**job)
        reached: float | None = None
        try:
            while True:
                time.sleep(0.1)
                info = handle.info()
                if halfway and throttle is None and info.epoch >= HALF_EPOCHS:
                    throttle = Throttle(slow.pid, 5.0)
                    throttle.start()
                m = handle.metrics()
                started = info.started_unix or 0.0
                hits = [e.unix_time - started for e in m.epochs if e.test_accuracy >= TARGET]
                if hits:
                    reached = hits[0]
                    break
                if info.state not in ("pending", "running"):
                    break
        finally:
            if throttle is not None:
                throttle.close()
        if info.state in ("pending", "running"):
            try:
                handle.cancel()
            except Exception:  # it ended between the last look and the cancel
                info = handle.info()
                if info.state in ("pending", "running"):
                    raise
    if reached is None and info.state != "completed":
        raise RuntimeError(f"job {info.job_id} ended {info.state}: {info.error}")
    # The ended job's workers finish their window and the shards drop its state, so that the
    # next job starts on a quiet cluster, whichever setting it runs.
    time.sleep(SETTLE_SECONDS)
    switches = [e.message for e in m.events if e.kind == "consistency"]
    return {
        "to_target_s": round(reached if reached is not None else info.duration or 0.0, 2),
        "reached": reached is not None,
        "epochs": len(m.epochs),
        "late": m.pushes_rejected.get("late", 0),
        "stale": m.pushes_rejected.get("stale", 0),
        "switches": switches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "auto.json")
    parser.add_argument(
        "--only", default="", help="a quick look: 'job|scenario' (e.g. 'digits lr 0.2|4 equal')"
    )
    args = parser.parse_args()
    only_job, _, only_scenario = args.only.partition("|")
    base = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    base["epochs"] = args.epochs
    jobs = {j: lr for j, lr in JOBS.items() if only_job in ("", j)}
    raw: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {j: {} for j in jobs}
    with tempfile.TemporaryDirectory(prefix="psc-auto-") as tmp:
        for scenario, (slowdown, halfway) in SCENARIOS.items():
            if only_scenario and scenario != only_scenario:
                continue
            cluster = start(Path(tmp) / scenario.replace(" ", "-"), slowdown)
            for by in raw.values():
                by[scenario] = {name: [] for name, _ in SETTINGS}
            try:
                # Interleaved, so that whatever else loads the machine weighs on all alike,
                # in an order shuffled per repeat, so that none always follows the same one.
                for repeat in range(args.repeats):
                    for job_name, lr in jobs.items():
                        order = list(SETTINGS)
                        random.Random(repeat).shuffle(order)
                        for name, setting in order:
                            optimizer = {**base["optimizer"], "lr": lr}
                            job = {**base, **setting, "optimizer": optimizer, "seed": repeat}
                            result = run(cluster, {**job, "name": name}, halfway)
                            raw[job_name][scenario][name].append(result)
                            print(job_name, "|", scenario, name, result, flush=True)
            finally:
                cluster.stop()
    summary = {
        j: {s: {n: summarise(r) for n, r in by.items()} for s, by in sc.items()}
        for j, sc in raw.items()
    }
    rows = {f"{j}: {s}": by for j, sc in summary.items() for s, by in sc.items()}
    out = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"nice python bench/auto.py --repeats {args.repeats} --epochs {args.epochs}",
        "setup": "digits (examples/digits.yaml) at lr "
        + " and ".join(map(str, JOBS.values()))
        + f", 2 shards, 4 workers, target {TARGET} test accuracy, median of {args.repeats}",
        "summary": summary,
        "per_job": {j: verdicts(sc, NAMES) for j, sc in summary.items()},
        "both_jobs": verdicts(rows, NAMES),
        "runs": raw,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for j, sc in summary.items():
        print(f"\n{j}\n" + table(sc, NAMES))
    print("\nboth jobs\n" + table(rows, NAMES))
    print(json.dumps(out["both_jobs"], indent=1))


if __name__ == "__main__":
    main()
