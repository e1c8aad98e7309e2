"""One worker 5x slower among four: samples/s and time to 95% per consistency mode.

Two local clusters of real processes (2 shards each): one with four normal workers (the
straggler-free baseline) and one with three normal workers and a straggler (``PSC_SLOWDOWN``:
it stretches its own time on every batch fivefold, as a slower machine would). On each, the
digits job (examples/digits.yaml) runs in sync, sync with one backup worker, ssp (s=2) and
async; on the straggler cluster each also runs with ``no_mitigation`` (detection only) to
show what the mitigations buy. The ratio that matters is a mode's samples/s with the
straggler over the same mode's without it, measured in the same run.

Samples/s counts the samples of applied (or buffered) steps over the job's training time;
a backup worker's dropped pushes and refused stale pushes are not counted. Time to 95% is
from the job's start to the first per-epoch evaluation at or above 0.95 test accuracy.

    .venv/bin/python bench/stragglers.py [--repeats 1] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402

SLOWDOWN = 5.0
TARGET = 0.95
MODES: list[tuple[str, dict[str, Any]]] = [
    ("sync", {"mode": "sync"}),
    ("sync + 1 backup", {"mode": "sync", "backup_workers": 1}),
    ("ssp s=2", {"mode": "ssp", "staleness": 2}),
    ("async", {"mode": "async"}),
]
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5", "PSC_WORKER_TIMEOUT_SECONDS": "3"}


def start(path: Path, straggler: bool) -> LocalCluster:
    cluster = LocalCluster(shards=2, workers=4 if not straggler else 3, state_dir=path, env=ENV)
    cluster.start()
    cluster.wait_for_workers(cluster.num_workers, timeout=120)
    if straggler:
        cluster.add_worker(wait=True, env={"PSC_SLOWDOWN": str(SLOWDOWN), "PSC_WORKER_ID": "slow"})
    return cluster


def run(cluster: LocalCluster, job: dict[str, Any]) -> dict[str, Any]:
    with cluster.client() as client:
        handle = client.submit(**job)
        info = handle.wait(timeout=1800)
        m = handle.metrics()
    seconds, started, accuracy = info.duration, info.started_unix, info.test_accuracy
    if info.state != "completed" or seconds is None or started is None or accuracy is None:
        raise RuntimeError(f"job {info.job_id} ended {info.state}: {info.error}")
    reached = [e.unix_time - started for e in m.epochs if e.test_accuracy >= TARGET]
    slow = next((w for w in m.workers if w.worker == "slow"), None)
    return {
        "accuracy": round(accuracy, 4),
        "seconds": round(seconds, 2),
        "samples_per_s": round(sum(s.samples for s in m.steps) / seconds, 1),
        "to_target_s": round(reached[0], 2) if reached else None,
        "late": m.pushes_rejected.get("late", 0),
        "stale": m.pushes_rejected.get("stale", 0),
        "straggler_steps": m.pushes_by_worker.get("slow", 0),
        "straggler_flagged": bool(slow and slow.straggler),
        "straggler_slowdown": round(slow.slowdown, 2) if slow else None,
        "events": sorted({e.kind for e in m.events}),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric field's median over the repeats (the first run's other fields)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r[key], int | float)]
        if isinstance(value, int | float) and not isinstance(value, bool) and values:
            out[key] = round(statistics.median(values), 2)
    out["repeats"] = len(runs)
    return out


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| mode | samples/s, no straggler | with straggler | kept | + no mitigation | kept "
        "| time to 95% (s): none / straggler / no mitigation | final acc. (straggler) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, _ in MODES:
        clean = results["clean"][name]
        slow = results["straggler"][name]
        bare = results["unmitigated"][name]

        def t(r: dict[str, Any]) -> str:
            return "-" if r["to_target_s"] is None else f"{r['to_target_s']:.1f}"

        lines.append(
            f"| {name} | {clean['samples_per_s']:.0f} | {slow['samples_per_s']:.0f} | "
            f"{slow['samples_per_s'] / clean['samples_per_s']:.0%} | {bare['samples_per_s']:.0f} | "
            f"{bare['samples_per_s'] / clean['samples_per_s']:.0%} | "
            f"{t(clean)} / {t(slow)} / {t(bare)} | {slow['accuracy']:.4f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in MODES]
    variants = [
        ("clean", "4 normal workers"),
        ("straggler", "1 of 4 is 5x slower, mitigated"),
        ("unmitigated", "1 of 4 is 5x slower, detection only"),
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.27
    for i, (key, label) in enumerate(variants):
        xs = [j + (i - 1) * width for j in range(len(names))]
        left.bar(xs, [results[key][n]["samples_per_s"] for n in names], width, label=label)
        right.bar(
            xs,
            [results[key][n]["to_target_s"] or 0.0 for n in names],
            width,
            label=label,
        )
    for ax, title in ((left, "samples/s (higher is better)"), (right, "seconds to 95% test acc.")):
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("digits, 2 shards x 4 workers, one straggler (bench/stragglers.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "stragglers.json")
    args = parser.parse_args()
    base = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    base["epochs"] = args.epochs
    variants = [
        ("clean", False, {}),
        ("straggler", True, {}),
        ("unmitigated", True, {"stragglers": {"no_mitigation": True}}),
    ]
    results: dict[str, dict[str, dict[str, Any]]] = {key: {} for key, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="psc-stragglers-") as tmp:
        clusters = {False: start(Path(tmp) / "clean", False), True: start(Path(tmp) / "slow", True)}
        try:
            # Interleaved, so that whatever else loads the machine meanwhile weighs on the
            # baseline and the straggler runs alike.
            for name, mode in MODES:
                for key, straggler, extra in variants:
                    runs = [
                        run(clusters[straggler], {**base, **mode, **extra, "name": name})
                        for _ in range(args.repeats)
                    ]
                    results[key][name] = median_of(runs)
                    print(key, name, results[key][name], flush=True)
        finally:
            for cluster in clusters.values():
                cluster.stop()
    kept = {
        name: results["straggler"][name]["samples_per_s"] / results["clean"][name]["samples_per_s"]
        for name, _ in MODES
    }
    best = max(kept, key=lambda n: results["straggler"][n]["samples_per_s"])
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "setup": f"digits, 2 shards, 4 workers (1 at PSC_SLOWDOWN={SLOWDOWN:g}), "
        f"{args.epochs} epochs, batch 32, median of {args.repeats}",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "results": results,
        "kept": {k: round(v, 3) for k, v in kept.items()},
        "best_mode_with_straggler": best,
        "best_kept_vs_best_clean": round(
            results["straggler"][best]["samples_per_s"]
            / max(r["samples_per_s"] for r in results["clean"].values()),
            3,
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(table(results))
    print(
        f"best mode with the straggler: {best}, "
        f"{summary['best_kept_vs_best_clean']:.0%} of the best straggler-free samples/s"
    )


if __name__ == "__main__":
    main()
