"""Knowledge distillation on digits: a small student distilled from a trained teacher, against
the same student trained without the teacher in the same run.

One local cluster (2 shards, ``--workers``) and the digits split of examples/digits_data.py.
For each of ``--runs`` seeds, through the SDK as a user would:

- the teacher, bench/distill_model.py's Teacher (64-256-256-10, 85,002 parameters), trained
  on the whole training split for ``--teacher-epochs`` (20; sync, Adam lr 2e-3);
- for each share of the training rows in ``--fractions`` (1: all 1,437; 0.1: 143 of them,
  stratified by class and seeded, as Hinton et al.'s "soft targets as regularizers" train on
  3% of their data) and each student width in ``--students`` (Student, 64-h-10: 1,210
  parameters at h = 16): the student distilled from that teacher (``client.distill``,
  ``--temperature``, ``--alpha``) and the same student alone (``client.submit``: same seed,
  so the same initial weights, same rows, optimizer, epochs, mode and batch size), the two
  submitted together so that they share the machine alike. On all the rows a student
  trains ``--epochs`` (20) of batch 64; on a share, ``--subset-epochs`` (50) of batch 16:
  about as many steps (450 at 0.1).

Every model is fetched and scored here on the whole test set (the job's own reported
accuracy is checked against it). What running the teacher on every batch costs: each student
job's median busy time per batch on its workers (the coordinator's EWMA: a batch's pull,
forward and backward, push, less waits on other workers), and, without the cluster's noise,
a student's forward and backward on 64 rows in one process and one thread with the workers'
own objectives, with and without the teacher (median of ``--step-repeats``). Writes
bench/results/distill.json and prints a markdown table (medians over the runs, and every run).

    .venv/bin/python bench/distill.py [--runs 3] [--students 16,32] [--fractions 1,0.1]
                                      [--temperature 4] [--alpha 0.7] [--quick]
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

import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import machine  # noqa: E402
from bench.distill_model import Student, Teacher  # noqa: E402
from examples.digits_data import load  # noqa: E402
from pscluster.client.job import Job  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.sdk import Client  # noqa: E402
from pscluster.model_compression.measure import intra_op_threads  # noqa: E402
from pscluster.v1 import coordinator_pb2 as co_pb2  # noqa: E402
from pscluster.worker.objectives import (  # noqa: E402
    BatchObjective,
    DistillObjective,
    HardObjective,
)

RESULTS = ROOT / "bench" / "results"
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5"}
OPTIMIZER = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
# The teacher with Adam in sync: async's staleness, or SGD with momentum at lr 0.1, left it
# anywhere from 0.89 to 0.97 (a student learns its teacher's mistakes too).
TEACHER_OPTIMIZER = {"name": "adam", "lr": 2e-3}
TEST = load()[1]


def scored(job: Job, model: nn.Module) -> float:
    """The fetched model's test accuracy, measured here; checked against what the job says."""
    model.load_state_dict(job.fetch_model())
    model.eval()
    x, y = (torch.from_numpy(a) for a in TEST)
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    reported = job.info().test_accuracy
    if reported is None or abs(reported - accuracy) > 1e-6:
        raise RuntimeError(f"job {job.id} reports {reported} but its model scores {accuracy}")
    return accuracy


def batch_ms(job: Job) -> float:
    """The job's workers' busy time per batch (EWMA), median over its workers, in ms."""
    busy = [w.busy_seconds for w in job.metrics().workers if w.batches]
    return round(1000 * statistics.median(busy), 2) if busy else float("nan")


def step_ms(hidden: int, teacher: nn.Module, repeats: int) -> tuple[float, float]:
    """One process, one thread: a student's forward and backward on 64 rows with the job's
    loss, and with the distillation loss (the workers' own objectives), their calls
    interleaved; the medians in ms: what the teacher costs a batch, without the cluster's
    noise."""
    x, y = (torch.from_numpy(a[:64]) for a in load()[0])
    spec = co_pb2.JobSpec(
        loss="cross_entropy", distill=co_pb2.DistillSpec(temperature=4.0, alpha=0.7)
    )
    objectives: list[BatchObjective] = [
        HardObjective(F.cross_entropy),
        DistillObjective(teacher, F.cross_entropy, spec, "teacher"),
    ]
    student = Student(hidden)
    times: tuple[list[float], list[float]] = ([], [])
    with intra_op_threads(1):
        for _ in range(repeats):
            for objective, spent in zip(objectives, times, strict=True):
                started = time.perf_counter()
                student.zero_grad()
                objective(student, x, y).backward()  # type: ignore[no-untyped-call]
                spent.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times[0]), 3), round(statistics.median(times[1]), 3)


def rows_of(fraction: float, seed: int) -> tuple[Any, Any]:
    """The training rows a student sees: all of them, or a stratified seeded share."""
    x, y = load()[0]
    if fraction >= 1:
        return x, y
    picked, _, labels, _ = train_test_split(
        x, y, train_size=fraction, stratify=y, random_state=seed
    )
    return picked, labels


def one_run(client: Client, args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """The teacher, then each share of the rows and student width, distilled and alone."""
    train, test = load()
    teacher = client.submit(
        model=Teacher,
        train=train,
        test=test,
        optimizer=TEACHER_OPTIMIZER,
        epochs=args.teacher_epochs,
        mode="sync",
        seed=seed,
    )
    teacher.wait(timeout=1800)
    teacher_model = Teacher()
    teacher_accuracy = scored(teacher, teacher_model)
    print(f"seed {seed}: teacher {teacher_accuracy:.4f}", flush=True)
    steps = {h: step_ms(h, teacher_model, args.step_repeats) for h in args.students}
    rows = []
    for fraction in args.fractions:
        subset = fraction < 1
        for hidden in args.students:
            same = {
                "train": rows_of(fraction, seed),
                "test": test,
                "optimizer": OPTIMIZER,
                "model_kwargs": {"hidden": hidden},
                "epochs": args.subset_epochs if subset else args.epochs,
                "batch_size": 16 if subset else 64,
                "mode": args.mode,
                "seed": seed + 1000,
            }
            distilled = client.distill(
                teacher, Student, temperature=args.temperature, alpha=args.alpha, **same
            )
            alone = client.submit(model=Student, **same)
            distilled.wait(timeout=1800)
            alone.wait(timeout=1800)
            row = {
                "seed": seed,
                "fraction": fraction,
                "train_rows": len(same["train"][1]),
                "hidden": hidden,
                "teacher_params": teacher.info().num_params,
                "student_params": distilled.info().num_params,
                "teacher_accuracy": teacher_accuracy,
                "alone_accuracy": scored(alone, Student(hidden)),
                "distilled_accuracy": scored(distilled, Student(hidden)),
                "alone_batch_ms": batch_ms(alone),
                "distilled_batch_ms": batch_ms(distilled),
                "alone_step_ms": steps[hidden][0],
                "distilled_step_ms": steps[hidden][1],
                "jobs": {"teacher": teacher.id, "distilled": distilled.id, "alone": alone.id},
            }
            print(
                f"  {row['train_rows']} rows, h={hidden}: alone {row['alone_accuracy']:.4f}, "
                f"distilled {row['distilled_accuracy']:.4f}",
                flush=True,
            )
            rows.append(row)
    return rows


def points(a: float, b: float) -> float:
    return round(100 * (a - b), 2)


def by_share(setting: tuple[float, int]) -> tuple[float, int]:
    """Table order: all the rows first, then smaller shares; narrow students first."""
    return -setting[0], setting[1]


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per share of the rows and student width: medians over the runs, the spread of the
    difference, and the worst gap to the teacher."""
    out = []
    for fraction, hidden in sorted({(r["fraction"], r["hidden"]) for r in rows}, key=by_share):
        mine = [r for r in rows if (r["fraction"], r["hidden"]) == (fraction, hidden)]
        gain = [points(r["distilled_accuracy"], r["alone_accuracy"]) for r in mine]
        gap = [points(r["distilled_accuracy"], r["teacher_accuracy"]) for r in mine]

        def median(key: str, of: list[dict[str, Any]] = mine) -> float:
            return float(statistics.median(r[key] for r in of))

        out.append(
            {
                "fraction": fraction,
                "train_rows": mine[0]["train_rows"],
                "hidden": hidden,
                "runs": len(mine),
                "student_params": mine[0]["student_params"],
                "teacher_params": mine[0]["teacher_params"],
                "teacher_accuracy": median("teacher_accuracy"),
                "alone_accuracy": median("alone_accuracy"),
                "distilled_accuracy": median("distilled_accuracy"),
                "gain_points": statistics.median(gain),
                "gain_range": [min(gain), max(gain)],
                "gap_points": statistics.median(gap),
                "worst_gap_points": min(gap),
                "alone_batch_ms": median("alone_batch_ms"),
                "distilled_batch_ms": median("distilled_batch_ms"),
                "alone_step_ms": median("alone_step_ms"),
                "distilled_step_ms": median("distilled_step_ms"),
            }
        )
    return out


def table(medians: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| training rows | student | parameters (of the teacher's) | teacher | alone | distilled "
        "| distilled - alone (range), points | distilled - teacher (worst) | worker ms per batch "
        "alone / distilled | one process ms per step alone / distilled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in medians:
        share = m["student_params"] / m["teacher_params"]
        low, high = m["gain_range"]
        lines.append(
            f"| {m['train_rows']:,} | 64-{m['hidden']}-10 | {m['student_params']:,} "
            f"({share:.1%}) | {m['teacher_accuracy']:.4f} | {m['alone_accuracy']:.4f} | "
            f"{m['distilled_accuracy']:.4f} | {m['gain_points']:+.2f} ({low:+.2f} to "
            f"{high:+.2f}) | {m['gap_points']:+.2f} ({m['worst_gap_points']:+.2f}) | "
            f"{m['alone_batch_ms']:.2f} / {m['distilled_batch_ms']:.2f} | "
            f"{m['alone_step_ms']:.3f} / {m['distilled_step_ms']:.3f} |"
        )
    lines += [
        "",
        "| seed | training rows | student | teacher | alone | distilled |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['train_rows']:,} | 64-{r['hidden']}-10 | "
            f"{r['teacher_accuracy']:.4f} | {r['alone_accuracy']:.4f} | "
            f"{r['distilled_accuracy']:.4f} |"
        )
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="seeds, each with its own teacher")
    parser.add_argument("--seed", type=int, default=1, help="the first run's seed")
    parser.add_argument("--students", default="16,32", help="student widths, comma-separated")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--fractions", default="1,0.1", help="shares of the training rows")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each student")
    parser.add_argument("--subset-epochs", type=int, default=50, help="... on a share below 1")
    parser.add_argument("--mode", default="sync", help="the students' consistency mode")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-repeats", type=int, default=300, help="timed steps, one process")
    parser.add_argument("--quick", action="store_true", help="one run, h=16, 2 epochs each")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    args = parser.parse_args()
    try:
        args.students = [int(h) for h in args.students.split(",")]
        args.fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        parser.error("--students (integers) and --fractions (numbers) are comma-separated")
    counts = (args.runs, args.teacher_epochs, args.epochs, args.subset_epochs, args.workers)
    if min(*counts, *args.students) < 1 or not all(0 < f <= 1 for f in args.fractions):
        parser.error("counts and widths must be >= 1, fractions in (0, 1]")
    if args.quick:
        args.runs, args.students, args.teacher_epochs = 1, [16], 2
        args.epochs, args.subset_epochs, args.step_repeats = 2, 2, 20
    return args


def main() -> None:
    args = parse()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="psc-distill-") as state:
        cluster = LocalCluster(shards=2, workers=args.workers, state_dir=Path(state), env=ENV)
        cluster.start()
        try:
            cluster.wait_for_workers(args.workers, timeout=120)
            with cluster.client() as client:
                for run in range(args.runs):
                    rows += one_run(client, args, args.seed + run)
        finally:
            cluster.stop()
    medians = summary(rows)
    out = {
        "machine": machine(),
        "command": " ".join(["python", "bench/distill.py", *sys.argv[1:]]),
        "quick": args.quick,
        "setup": {
            "workers": args.workers,
            "shards": 2,
            "teacher_epochs": args.teacher_epochs,
            "teacher_mode": "sync",
            "teacher_optimizer": TEACHER_OPTIMIZER,
            "fractions": args.fractions,
            "epochs": args.epochs,
            "subset_epochs": args.subset_epochs,
            "mode": args.mode,
            "optimizer": OPTIMIZER,
            "temperature": args.temperature,
            "alpha": args.alpha,
        },
        "summary": medians,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table(medians, rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
