"""One row of each of a job's tables (a step, an evaluation, a shard, a worker's speed, an
event), and each made from its wire message.

Every row with a time carries it twice: ``unix_time`` as the cluster recorded it, and
``seconds`` since ``origin``, the job's start once :meth:`JobMetrics.of_job` knows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pscluster.client.metric_names import ACCURACY, LOSS
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2


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
class PhaseRow:
    """Where a worker's step time went over the batches it timed up to ``unix_time``:
    seconds per phase ("pull", "wait", "forward", "backward", "push", "other"), the time its
    training thread was blocked in each (they add up to the batches' wall time)."""

    unix_time: float
    worker: str
    batches: int
    phases: dict[str, float]
    seconds: float  # since the job started (see JobMetrics.started_unix)


def step_row(s: co_pb2.StepMetric, origin: float) -> StepRow:
    seconds = s.unix_time - origin
    return StepRow(s.step, s.loss, s.samples, s.worker_id, s.epoch, s.unix_time, seconds)


def epoch_row(e: co_pb2.EpochMetric, origin: float) -> EpochRow:
    measured = dict(e.metrics)
    if not measured and e.test_accuracy >= 0:
        # An older coordinator: every job was a classifier, its accuracy in its own field.
        measured[ACCURACY] = e.test_accuracy
    measured.setdefault(LOSS, e.test_loss)
    seconds = e.unix_time - origin
    return EpochRow(
        e.epoch, e.test_accuracy, e.test_loss, e.unix_time, e.samples, seconds, measured
    )


def shard_row(s: common_pb2.ShardJobStats) -> ShardRow:
    return ShardRow(
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


def worker_speed_row(w: co_pb2.WorkerSpeed) -> WorkerSpeedRow:
    return WorkerSpeedRow(
        w.worker_id,
        w.busy_seconds,
        w.step_seconds,
        w.batches,
        w.slowdown,
        w.straggler,
        w.excluded,
        w.active,
    )


def phase_row(p: co_pb2.PhasePoint, origin: float) -> PhaseRow:
    return PhaseRow(p.unix_time, p.worker_id, p.batches, dict(p.seconds), p.unix_time - origin)


def event_row(e: co_pb2.JobEvent, origin: float) -> EventRow:
    return EventRow(e.unix_time, e.kind, e.worker_id, e.message, e.unix_time - origin)
