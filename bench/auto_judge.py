"""Mode auto's loss judge on real loss curves: stale jobs it must catch, noisy ones it must not.

The judge (pscluster/coordinator/auto_loss.py) reads only the step losses the workers report.
This bench collects those losses from real jobs on a local cluster (2 shards, 4 workers), each
run to its last epoch under one fixed setting, and replays them through the judge as mode auto
feeds it (a report of 8 steps at a time, the judge restarted after each verdict; stalls count
except under sync, whose local steps are judged on rises only). Two kinds of job:

- *stale*: digits at lr 0.2 under async, async with 8 local steps and ssp s=2, whose loss
  wanders or blows up and whose test accuracy ends far below the 95% sync reaches. A verdict
  is owed; the figure is the step of the first.
- *sound*: digits at lr 0.05 (async; sync with 8 local steps; async at batch 8, noisy), digits
  at lr 0.2 under sync with 8 local steps, and a noisy job: wine with 15% of its training
  labels flipped, a BatchNorm MLP at batch 8 (bench/auto_judge_model.py) under sync, sync with
  8 local steps and async, which learns (91-100% test accuracy) and settles well above half its
  first loss. Every verdict on these is false.

The replay is repeated for a range of ``z`` (LossRules.z: the standard errors a change must
stand clear of its blocks' noise; 0 weighs no noise).

    nice .venv/bin/python bench/auto_judge.py [--seeds 0,1,2,3] [--traces FILE]
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
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auto import start  # noqa: E402
from bench.auto_judge_model import NoisyWineNet  # noqa: E402
from bench.common import machine  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402
from pscluster.coordinator.auto_loss import LossJudge, LossRules  # noqa: E402

REPORT_STEPS = 8
Z_VALUES = (0.0, 1.0, 1.64, 2.0, 3.0)


def noisy_wine() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Wine, standardised, with 15% of the training labels replaced by random ones."""
    data = load_wine()
    x = data.data.astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=0
    )
    rng = np.random.default_rng(1)
    flip = rng.random(len(y_train)) < 0.15
    y_train = y_train.copy()
    y_train[flip] = rng.integers(0, 3, int(flip.sum()))
    return (x_train, y_train), (x_test, y_test)


def jobs() -> dict[str, tuple[dict[str, Any], bool]]:
    """name -> (submit kwargs, stale)."""
    digits = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    train, test = noisy_wine()
    wine: dict[str, Any] = dict(
        model=NoisyWineNet, train=train, test=test, epochs=60, batch_size=8, loss="cross_entropy"
    )

    def d(lr: float, **kw: Any) -> dict[str, Any]:
        return {**digits, "optimizer": {**digits["optimizer"], "lr": lr}, "epochs": 12, **kw}

    def w(**kw: Any) -> dict[str, Any]:
        return {**wine, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, **kw}

    return {
        "digits lr 0.2: async": (d(0.2, mode="async"), True),
        "digits lr 0.2: async, 8 local": (d(0.2, mode="async", local_steps=8), True),
        "digits lr 0.2: ssp s=2": (d(0.2, mode="ssp", staleness=2), True),
        "digits: async": (d(0.05, mode="async"), False),
        "digits: sync, 8 local": (d(0.05, mode="sync", local_steps=8), False),
        "digits lr 0.2: sync, 8 local": (d(0.2, mode="sync", local_steps=8), False),
        "digits batch 8: async": (d(0.05, mode="async", batch_size=8, epochs=5), False),
        "noisy wine: sync": (w(mode="sync"), False),
        "noisy wine: sync, 8 local": (w(mode="sync", local_steps=8), False),
        "noisy wine: async": (w(mode="async"), False),
    }


def collect(seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Run every job to its last epoch once per seed; its step losses in step order."""
    traces: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="psc-judge-") as tmp:
        cluster = start(Path(tmp), None)
        try:
            with cluster.client() as client:
                for seed in seeds:
                    for name, (job, stale) in jobs().items():
                        handle = client.submit(**{**job, "seed": seed, "name": f"judge-{seed}"})
                        handle.wait(timeout=600)
                        m = handle.metrics()
                        losses = [round(s.loss, 5) for s in sorted(m.steps, key=lambda s: s.step)]
                        accuracy = [round(e.test_accuracy, 3) for e in m.epochs]
                        traces[f"{name} (seed {seed})"] = {
                            "stale": stale,
                            "stalls": job["mode"] != "sync",
                            "accuracy": accuracy,
                            "losses": losses,
                        }
                        print(name, seed, len(losses), accuracy[-1], flush=True)
        finally:
            cluster.stop()
    return traces


def replay(losses: list[float], stalls: bool, judge: LossJudge) -> list[int]:
    """The steps at which the judge gives a verdict, fed as mode auto feeds it."""
    steps = []
    for i in range(0, len(losses), REPORT_STEPS):
        if judge.feed(losses[i : i + REPORT_STEPS], True, stalls):
            steps.append(i + REPORT_STEPS)
            judge.restart()
    return steps


def sweep(traces: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each trace replayed through a judge of each ``z`` in Z_VALUES, the rest as shipped."""
    out: dict[str, Any] = {}
    for z in Z_VALUES:
        verdicts = {
            k: replay(t["losses"], t["stalls"], LossJudge(LossRules(z=z)))
            for k, t in traces.items()
        }
        stale = [v for k, v in verdicts.items() if traces[k]["stale"]]
        sound = [v for k, v in verdicts.items() if not traces[k]["stale"]]
        firsts = [v[0] for v in stale if v]
        out[f"z={z}"] = {
            "stale_jobs_missed": sum(not v for v in stale),
            "stale_jobs": len(stale),
            "first_verdict_step_median": statistics.median(firsts) if firsts else None,
            "first_verdict_step_max": max(firsts, default=None),
            "sound_jobs_with_a_verdict": sum(bool(v) for v in sound),
            "sound_jobs": len(sound),
            "false_verdicts": sum(len(v) for v in sound),
            "verdicts": verdicts,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--traces", type=Path, help="replay the traces of an earlier run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/auto_judge.json")
    args = parser.parse_args()
    command = f"nice python bench/auto_judge.py --seeds {args.seeds}"
    if args.traces:
        earlier = json.loads(args.traces.read_text())
        traces, collected = earlier["traces"], earlier["collected"]
    else:
        collected = {"when": time.strftime("%Y-%m-%d %H:%M"), "command": command}
        traces = collect([int(s) for s in args.seeds.split(",")])
    results = sweep(traces)
    for label, r in results.items():
        print(
            f"{label:7s} stale jobs missed {r['stale_jobs_missed']}/{r['stale_jobs']}, first "
            f"verdict at step {r['first_verdict_step_median']} (median, max "
            f"{r['first_verdict_step_max']}); sound jobs with a verdict "
            f"{r['sound_jobs_with_a_verdict']}/{r['sound_jobs']}, false verdicts "
            f"{r['false_verdicts']}"
        )
    out = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"python bench/auto_judge.py --traces {args.traces}" if args.traces else command,
        "collected": collected,
        "default_z": LossRules().z,
        "replay": {
            k: {kk: vv for kk, vv in r.items() if kk != "verdicts"} for k, r in results.items()
        },
        "verdicts": {k: r["verdicts"] for k, r in results.items()},
        "traces": traces,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
