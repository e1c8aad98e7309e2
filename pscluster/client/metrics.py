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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pscluster.client.metric_names import (
    ACCURACY,
    HIGHER_IS_BETTER,
    KNOWN_METRICS,
    LOSS,
    format_metric,
    infer_metric,
    metric_label,
    ordered_metrics,
)
from pscluster.client.metric_rows import (
    EpochRow,
    EventRow,
    PhaseRow,
    ShardRow,
    StepRow,
    WorkerSpeedRow,
    epoch_row,
    event_row,
    phase_row,
    shard_row,
    step_row,
    worker_speed_row,
)
from pscluster.client.table_metrics import TableRow, table_rows
from pscluster.v1 import coordinator_pb2 as co_pb2

if TYPE_CHECKING:
    from pscluster.client.info import JobInfo

# The names and rows have modules of their own; users import them from here.
__all__ = [
    "ACCURACY",
    "HIGHER_IS_BETTER",
    "KNOWN_METRICS",
    "LOSS",
    "EpochRow",
    "EventRow",
    "JobMetrics",
    "PhaseRow",
    "ShardRow",
    "StepRow",
    "TableRow",
    "WorkerSpeedRow",
    "format_metric",
    "infer_metric",
    "metric_label",
    "ordered_metrics",
]


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
    # The model's embedding tables on the shards: rows, traffic, hot ids (none: no tables).
    tables: list[TableRow] = field(default_factory=list)
    # A predict job: seconds by phase summed over its partitions ("load_model", "read",
    # "score" on the workers; "receive", the outputs' upload, on the coordinator).
    predict_seconds: dict[str, float] = field(default_factory=dict)
    # A train job: where its workers' step time went, per worker report, oldest first.
    timeline: list[PhaseRow] = field(default_factory=list)

    def phases_per_step(self, worker: str | None = None) -> dict[str, float]:
        """Mean seconds per batch in each phase (over every worker, or one), in the order
        pull, wait, forward, backward, push, other; empty before any report."""
        rows = [r for r in self.timeline if worker is None or r.worker == worker]
        batches = sum(r.batches for r in rows)
        if not batches:
            return {}
        totals: dict[str, float] = {}
        for r in rows:
            for name, s in r.phases.items():
                totals[name] = totals.get(name, 0.0) + s
        order = ("pull", "wait", "forward", "backward", "push", "other")
        names = [n for n in order if n in totals] + sorted(set(totals) - set(order))
        return {n: totals[n] / batches for n in names}

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
            timeline=[dataclasses.replace(p, seconds=p.unix_time - origin) for p in self.timeline],
            metric=metric,
            started_unix=origin,
        )

    @classmethod
    def from_proto(cls, m: co_pb2.JobMetrics) -> JobMetrics:
        """The coordinator's reply, with ``metric`` and ``started_unix`` inferred from it."""
        times = [s.unix_time for s in m.steps] + [e.unix_time for e in m.epochs]
        times += [e.unix_time for e in m.events]
        origin = min(times, default=0.0)
        epochs = [epoch_row(e, origin) for e in m.epochs]
        return cls(
            job_id=m.job_id,
            steps=[step_row(s, origin) for s in m.steps],
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
            shards=[shard_row(s) for s in m.shards],
            workers=[worker_speed_row(w) for w in m.workers],
            events=[event_row(e, origin) for e in m.events],
            tables=table_rows(m.shards),
            predict_seconds=dict(m.predict_seconds),
            timeline=[phase_row(p, origin) for p in m.timeline],
            metric=infer_metric(epochs[-1].metrics) if epochs else LOSS,
            started_unix=origin,
        )


def _times(m: JobMetrics) -> list[float]:
    rows: list[StepRow | EpochRow | EventRow] = [*m.steps, *m.epochs, *m.events]
    return [r.unix_time for r in rows]
