"""A job's training curves as tables: rows a user plots, compares or writes out as CSV.

:class:`~pscluster.client.metrics.JobMetrics` mirrors the coordinator's reply (histograms as
dicts). A :class:`History` is the same data shaped for analysis: times in seconds since the job
started, so two runs line up on one axis, and the staleness histograms as rows. It needs
nothing beyond the standard library: ``to_csv`` writes files that pandas, a spreadsheet or
gnuplot read as they are.

Each evaluation carries what the job measured: the test loss and the job's metric
(``History.metric``: "accuracy" for a classifier, "mse" or "mae" for a regression, "loss" when
the loss is all). epochs.csv has a ``test_<metric>`` column for each, e.g. ``test_accuracy``
and ``test_loss``, or ``test_mse`` and ``test_loss``.

Example::

    h = job.history()
    last = h.epochs[-1]
    print(h.metric, last.metrics[h.metric], last.seconds)
    h.to_csv("runs/ssp")   # steps.csv, epochs.csv, staleness.csv
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pscluster.client.info import JobInfo
from pscluster.client.metrics import JobMetrics, PhaseRow, ordered_metrics

__all__ = ["CSV_FILES", "EpochPoint", "History", "PhaseSample", "StalenessBin", "StepPoint"]

# The files to_csv writes, one per table.
CSV_FILES = ("steps.csv", "epochs.csv", "staleness.csv", "phases.csv")

VERSION = "version"  # updates applied on a shard between a worker's pull and its push
CLOCK = "clock"  # ssp: the pushing worker's clock lead over the slowest worker


@dataclass(frozen=True)
class StepPoint:
    """One training step (one pushed gradient) as its worker reported it."""

    step: int  # job-wide, in order of report
    seconds: float  # since the job started (the worker's clock at the step)
    loss: float  # training loss of the batch
    samples: int  # samples in the batch
    worker: str
    epoch: int


@dataclass(frozen=True)
class EpochPoint:
    """One evaluation of the parameters on the test set, made after an epoch."""

    epoch: int
    seconds: float  # since the job started
    test_accuracy: float  # 0..1; -1 when the job does not measure accuracy
    test_loss: float
    samples: int  # training samples seen when the evaluation was made
    # Everything measured: "loss" and the job's metric, e.g. {"loss": 0.04, "mse": 0.031}.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StalenessBin:
    """How many applied pushes had one staleness (one bar of a histogram)."""

    kind: str  # "version" or "clock"
    lag: int
    pushes: int  # shard-level pushes: a step pushes one slice to each shard


@dataclass(frozen=True)
class PhaseSample:
    """Where one worker's step time went over the batches of one of its reports: mean
    seconds per batch in each phase (they add up to its mean step time)."""

    seconds: float  # since the job started (the report's time)
    worker: str
    batches: int
    pull: float
    wait: float
    forward: float
    backward: float
    push: float
    other: float

    @property
    def step(self) -> float:
        return self.pull + self.wait + self.forward + self.backward + self.push + self.other


@dataclass(frozen=True)
class History:
    """A job's per-step loss, per-epoch test results and staleness histograms, as rows.

    ``started_unix`` is the origin of every ``seconds``: the job's start, or the first step's
    time for a job not started yet. ``metric`` is what the job evaluates besides the loss.
    Rows are in order (steps by number, epochs by epoch, staleness by kind then lag). Empty
    tables mean nothing was recorded yet.
    """

    job_id: str
    mode: str
    state: str
    started_unix: float
    epochs_planned: int
    metric: str
    steps: list[StepPoint] = field(default_factory=list)
    epochs: list[EpochPoint] = field(default_factory=list)
    staleness: list[StalenessBin] = field(default_factory=list)
    pushes_applied: int = 0
    phases: list[PhaseSample] = field(default_factory=list)

    @classmethod
    def from_metrics(cls, info: JobInfo, metrics: JobMetrics) -> History:
        """Build the tables from a job's info (its start, its metric) and its metrics
        (everything else)."""
        metrics = metrics.of_job(info)  # raises if they are of two jobs
        steps = [
            StepPoint(s.step, s.seconds, s.loss, s.samples, s.worker, s.epoch)
            for s in sorted(metrics.steps, key=lambda s: s.step)
        ]
        epochs = [
            EpochPoint(e.epoch, e.seconds, e.test_accuracy, e.test_loss, e.samples, dict(e.metrics))
            for e in sorted(metrics.epochs, key=lambda e: e.epoch)
        ]
        return cls(
            job_id=info.job_id,
            mode=info.mode,
            state=info.state,
            started_unix=metrics.started_unix,
            epochs_planned=info.epochs,
            metric=metrics.metric,
            steps=steps,
            epochs=epochs,
            staleness=_bins(VERSION, metrics.staleness) + _bins(CLOCK, metrics.clock_staleness),
            pushes_applied=metrics.pushes_applied,
            phases=[_sample(p) for p in metrics.timeline if p.batches],
        )

    def histogram(self, kind: str = VERSION) -> dict[int, int]:
        """One staleness histogram, lag -> pushes: ``kind`` is "version" or "clock"."""
        if kind not in (VERSION, CLOCK):
            raise ValueError(f"staleness kind {kind!r} is unknown; expected 'version' or 'clock'")
        return {b.lag: b.pushes for b in self.staleness if b.kind == kind}

    @property
    def metric_names(self) -> list[str]:
        """Every metric some evaluation measured, the job's own first and the loss last."""
        return ordered_metrics((k for e in self.epochs for k in e.metrics), self.metric)

    def metric_values(self, metric: str | None = None) -> list[float]:
        """One metric (default: the job's) at each evaluation, NaN where it was not measured."""
        name = metric or self.metric
        return [e.metrics.get(name, math.nan) for e in self.epochs]

    def tables(self) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """Each table as (column names, rows of plain values), keyed by its CSV file name."""
        return {
            "steps.csv": _table(StepPoint, self.steps),
            "epochs.csv": self._epochs_table(),
            "staleness.csv": _table(StalenessBin, self.staleness),
            "phases.csv": _table(PhaseSample, self.phases),
        }

    def _epochs_table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        # A column per metric measured, named as before there were several: a classifier's
        # epochs.csv is still epoch, seconds, test_accuracy, test_loss, samples.
        names = self.metric_names
        header = ("epoch", "seconds", *(f"test_{m}" for m in names), "samples")
        rows = [
            (e.epoch, e.seconds, *(e.metrics.get(m, "") for m in names), e.samples)
            for e in self.epochs
        ]
        return header, rows

    def to_csv(self, directory: str | Path) -> list[Path]:
        """Write steps.csv, epochs.csv, staleness.csv and phases.csv (with a header row) into
        ``directory``, creating it; return the paths written."""
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file; expected a directory to write the CSVs into")
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, (header, rows) in self.tables().items():
            path = folder / name
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows)
            written.append(path)
        return written


def _sample(p: PhaseRow) -> PhaseSample:
    """Mean seconds per batch by phase; a phase this client does not know counts as other."""
    mean = {name: s / p.batches for name, s in p.phases.items()}
    known = ("pull", "wait", "forward", "backward", "push")
    other = sum(s for n, s in mean.items() if n not in known)
    return PhaseSample(
        seconds=p.seconds,
        worker=p.worker,
        batches=p.batches,
        pull=mean.get("pull", 0.0),
        wait=mean.get("wait", 0.0),
        forward=mean.get("forward", 0.0),
        backward=mean.get("backward", 0.0),
        push=mean.get("push", 0.0),
        other=other,
    )


def _bins(kind: str, histogram: Mapping[int, int]) -> list[StalenessBin]:
    return [StalenessBin(kind, lag, n) for lag, n in sorted(histogram.items())]


def _table(
    row_type: type[Any], rows: Sequence[Any]
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    header = tuple(f.name for f in dataclasses.fields(row_type))
    return header, [dataclasses.astuple(r) for r in rows]
