"""A job's metrics as plain dataclasses: what a user plots or asserts on after training.

Every row with a time carries it twice: ``unix_time`` as the cluster recorded it, and
``seconds`` since the job started, the axis :class:`~pscluster.client.history.History` and its
CSVs use, so two runs line up.

A job evaluates one metric on its test set besides the loss: "accuracy" for a classifier,
"mse" or "mae" for a regression, or only "loss" for a custom loss. :attr:`JobMetrics.metric`
names it and :attr:`JobMetrics.final_metric` is its last value; ``final_accuracy`` stays for
classifiers and is None for the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pscluster.v1 import coordinator_pb2 as co_pb2

if TYPE_CHECKING:
    from pscluster.client.info import JobInfo

ACCURACY = "accuracy"
LOSS = "loss"
# The order metrics are listed in (columns, CSV headers): the job's own comes first anyway.
KNOWN_METRICS = (ACCURACY, "mse", "mae", LOSS)
# Accuracy rises as a job learns; mse, mae and the loss fall. A plot or a target needs to know.
HIGHER_IS_BETTER = frozenset({ACCURACY})


def metric_label(metric: str) -> str:
    """How a metric is named where space is short: "acc 0.953", "mse 0.0312", "test loss 0.2"."""
    if metric == ACCURACY:
        return "acc"
    return "test loss" if metric == LOSS else metric


def format_metric(metric: str, value: float, digits: int = 4) -> str:
    """Accuracy with fixed decimals (it is 0..1); errors and losses with significant digits,
    since an mse may be 1234.5 or 0.00031."""
    if metric == ACCURACY:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}g}"


def ordered_metrics(names: Iterable[str], first: str | None = None) -> list[str]:
    """``names`` without repeats: ``first`` (the job's metric), the known ones in their order,
    any other alphabetically, the loss last."""
    rank = {m: i for i, m in enumerate(KNOWN_METRICS)}
    return sorted(set(names), key=lambda m: (m != first, m == LOSS, rank.get(m, len(rank)), m))


def infer_metric(metrics: Mapping[str, float]) -> str:
    """The job's metric among what one evaluation measured, when nothing else says it: the
    first known one other than the loss (the coordinator sends only the job's), else "loss"."""
    return next((m for m in KNOWN_METRICS if m in metrics), LOSS)


@dataclass(frozen=True)
class StepRow:
    """One training step as a worker reported it."""

    step: int
    loss: float
    samples: int
    worker: str
    epoch: int
    unix_time: float  # the worker's clock at the step
    seconds: float  # since the job started (see JobMetrics.started_unix)


@dataclass(frozen=True)
class EpochRow:
    """One evaluation of the parameters on the test set."""

    epoch: int
    test_accuracy: float  # -1 when the job does not measure accuracy: see ``metrics``
    test_loss: float
    unix_time: float
    samples: int  # training samples seen when the evaluation was made
    seconds: float  # since the job started (see JobMetrics.started_unix)
    # Everything the evaluation measured: "loss" and the job's metric, e.g.
    # {"loss": 0.21, "accuracy": 0.95} or {"loss": 0.04, "mse": 0.031}.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardRow:
    """One shard's share of the job: its range of the flat vector and its push counters."""

    shard: str
    start: int
    length: int
    version: int
    pushes_applied: int
    pushes_rejected: dict[str, int]
    checksum: float
    # ssp: the largest lead of a worker's clock over the slowest member at a granted pull, and
    # the clock staleness of applied pushes; both stay <= the staleness bound.
    max_clock_lead: int = 0
    clock_staleness: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSpeedRow:
    """A worker's timings on the job, as the coordinator's straggler detector saw them."""

    worker: str
    busy_seconds: float  # EWMA per batch of wall time less waits on other workers
    step_seconds: float  # EWMA of wall time per batch
    batches: int
    slowdown: float  # busy time over the median of the other workers; 0: unknown
    straggler: bool
    excluded: bool  # ssp: not counted in the slowest clock
    active: bool


@dataclass(frozen=True)
class EventRow:
    """Something that happened to the job: a straggler flagged or cleared, a lease split."""

    unix_time: float
    kind: str
    worker: str
    message: str
    seconds: float  # since the job started (see JobMetrics.started_unix)


@dataclass(frozen=True)
class JobMetrics:
    """Per-step loss, per-epoch test results and the parameter servers' push statistics.

    ``metric`` is what the job evaluates besides the loss ("accuracy", "mse", "mae" or "loss"),
    and every row's ``seconds`` counts from ``started_unix``. The coordinator's reply alone
    tells neither for sure, so :meth:`from_proto` infers them (the metric from the
    evaluations, the origin from the earliest time reported); :meth:`of_job` sets both from
    the job's info.

    Example::

        m = job.metrics()
        print(m.metric, m.final_metric, m.pushes_applied, m.pushes_rejected.get("stale", 0))
        losses = [row.loss for row in m.steps]
        curve = [(e.seconds, e.metrics[m.metric]) for e in m.epochs]
    """

    job_id: str
    steps: list[StepRow] = field(default_factory=list)
    epochs: list[EpochRow] = field(default_factory=list)
    pushes_applied: int = 0
    pushes_rejected: dict[str, int] = field(default_factory=dict)
    bytes_pushed: int = 0  # payload bytes the shards received (after compression)
    bytes_pulled: int = 0
    pulls: int = 0
    bytes_pushed_raw: int = 0  # what those pushes would have been as float32
    # version staleness (updates applied since the worker's pull) of applied pushes -> count
    staleness: dict[int, int] = field(default_factory=dict)
    # clock staleness (the worker's lead over the slowest worker) of applied pushes -> count
    clock_staleness: dict[int, int] = field(default_factory=dict)
    pushes_by_worker: dict[str, int] = field(default_factory=dict)
    shards: list[ShardRow] = field(default_factory=list)
    workers: list[WorkerSpeedRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    # Batches the workers trained nothing on, by reason ("stale", "late", "nonfinite", ...):
    # they are in no step and no sample count.
    batches_dropped: dict[str, int] = field(default_factory=dict)
    metric: str = LOSS
    started_unix: float = 0.0  # the origin of every row's ``seconds``

    @property
    def stragglers(self) -> list[str]:
        """Workers flagged as stragglers when the metrics were read."""
        return [w.worker for w in self.workers if w.straggler]

    def staleness_percentile(self, q: float) -> int | None:
        """The ``q``-quantile (0..1) of the version staleness of applied pushes."""
        total = sum(self.staleness.values())
        if total == 0:
            return None
        seen = 0
        for lag, n in sorted(self.staleness.items()):
            seen += n
            if seen >= q * total:
                return lag
        return max(self.staleness)

    @property
    def final_accuracy(self) -> float | None:
        """Test accuracy of the last evaluation; None if there was none or the job does not
        measure accuracy (a regression: see ``final_metric``)."""
        return self.epochs[-1].metrics.get(ACCURACY) if self.epochs else None

    @property
    def final_metric(self) -> float | None:
        """The job's metric (``metric``) at the last evaluation, None before the first."""
        return self.epochs[-1].metrics.get(self.metric) if self.epochs else None

    @property
    def metric_names(self) -> list[str]:
        """Every metric some evaluation measured, the job's own first and the loss last."""
        return ordered_metrics((k for e in self.epochs for k in e.metrics), self.metric)

    @property
    def mean_staleness(self) -> float | None:
        total = sum(self.staleness.values())
        if total == 0:
            return None
        return sum(k * v for k, v in self.staleness.items()) / total

    @property
    def compression_ratio(self) -> float | None:
        """Raw float32 bytes over bytes pushed (1.0 uncompressed), None before any push."""
        if self.bytes_pushed == 0:
            return None
        return self.bytes_pushed_raw / self.bytes_pushed

    @property
    def total_rejected(self) -> int:
        return sum(self.pushes_rejected.values())

    def of_job(self, info: JobInfo) -> JobMetrics:
        """These metrics with what only the job's info tells for sure: the job's metric, and its
        start as the origin of every ``seconds`` (the origin :class:`History` uses)."""
        if info.job_id != self.job_id:
            raise ValueError(
                f"the info is of job {info.job_id!r} but the metrics of job {self.job_id!r}; "
                "pass both of the same job"
            )
        times = _times(self)
        origin = info.started_unix or (min(times) if times else info.created_unix)
        # The info was read a moment apart from the metrics; an older coordinator names no
        # metric, and then the evaluations say better what was measured.
        last = self.epochs[-1].metrics if self.epochs else {}
        metric = info.metric if not last or info.metric in last else self.metric
        return dataclasses.replace(
            self,
            steps=[dataclasses.replace(s, seconds=s.unix_time - origin) for s in self.steps],
            epochs=[dataclasses.replace(e, seconds=e.unix_time - origin) for e in self.epochs],
            events=[dataclasses.replace(e, seconds=e.unix_time - origin) for e in self.events],
            metric=metric,
            started_unix=origin,
        )

    @classmethod
    def from_proto(cls, m: co_pb2.JobMetrics) -> JobMetrics:
        """The coordinator's reply, with ``metric`` and ``started_unix`` inferred from it."""
        times = [s.unix_time for s in m.steps] + [e.unix_time for e in m.epochs]
        times += [e.unix_time for e in m.events]
        origin = min(times, default=0.0)
        epochs = [_epoch_row(e, origin) for e in m.epochs]
        return cls(
            job_id=m.job_id,
            steps=[_step_row(s, origin) for s in m.steps],
            epochs=epochs,
            pushes_applied=m.pushes_applied,
            pushes_rejected=dict(m.pushes_rejected),
            bytes_pushed=m.bytes_pushed,
            bytes_pulled=m.bytes_pulled,
            pulls=m.pulls,
            bytes_pushed_raw=m.bytes_pushed_raw,
            staleness=dict(sorted(m.staleness.items())),
            clock_staleness=dict(sorted(m.clock_staleness.items())),
            pushes_by_worker=dict(m.pushes_by_worker),
            batches_dropped=dict(m.batches_dropped),
            shards=[
                ShardRow(
                    shard=s.shard,
                    start=s.start,
                    length=s.length,
                    version=s.version,
                    pushes_applied=s.pushes_applied,
                    pushes_rejected=dict(s.pushes_rejected),
                    checksum=s.checksum,
                    max_clock_lead=s.max_clock_lead,
                    clock_staleness=dict(s.clock_staleness),
                )
                for s in m.shards
            ],
            workers=[
                WorkerSpeedRow(
                    w.worker_id,
                    w.busy_seconds,
                    w.step_seconds,
                    w.batches,
                    w.slowdown,
                    w.straggler,
                    w.excluded,
                    w.active,
                )
                for w in m.workers
            ],
            events=[
                EventRow(e.unix_time, e.kind, e.worker_id, e.message, e.unix_time - origin)
                for e in m.events
            ],
            metric=infer_metric(epochs[-1].metrics) if epochs else LOSS,
            started_unix=origin,
        )


def _times(m: JobMetrics) -> list[float]:
    rows: list[StepRow | EpochRow | EventRow] = [*m.steps, *m.epochs, *m.events]
    return [r.unix_time for r in rows]


def _step_row(s: co_pb2.StepMetric, origin: float) -> StepRow:
    seconds = s.unix_time - origin
    return StepRow(s.step, s.loss, s.samples, s.worker_id, s.epoch, s.unix_time, seconds)


def _epoch_row(e: co_pb2.EpochMetric, origin: float) -> EpochRow:
    measured = dict(e.metrics)
    if not measured and e.test_accuracy >= 0:
        # An older coordinator: every job was a classifier, its accuracy in its own field.
        measured[ACCURACY] = e.test_accuracy
    measured.setdefault(LOSS, e.test_loss)
    seconds = e.unix_time - origin
    return EpochRow(
        e.epoch, e.test_accuracy, e.test_loss, e.unix_time, e.samples, seconds, measured
    )
