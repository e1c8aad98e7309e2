"""A job's metrics as plain dataclasses: what a user plots or asserts on after training."""

from __future__ import annotations

from dataclasses import dataclass, field

from pscluster.v1 import coordinator_pb2 as co_pb2


@dataclass(frozen=True)
class StepRow:
    """One training step as a worker reported it."""

    step: int
    loss: float
    samples: int
    worker: str
    epoch: int
    time: float  # unix seconds


@dataclass(frozen=True)
class EpochRow:
    """One evaluation of the parameters on the test set."""

    epoch: int
    test_accuracy: float
    test_loss: float
    time: float  # unix seconds
    samples: int  # training samples seen when the evaluation was made


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

    time: float  # unix seconds
    kind: str
    worker: str
    message: str


@dataclass(frozen=True)
class JobMetrics:
    """Per-step loss, per-epoch test accuracy and the parameter servers' push statistics.

    Example::

        m = job.metrics()
        print(m.final_accuracy, m.pushes_applied, m.pushes_rejected.get("stale", 0))
        losses = [row.loss for row in m.steps]
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
        """Test accuracy of the last evaluation, None if there was none."""
        return self.epochs[-1].test_accuracy if self.epochs else None

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

    @classmethod
    def from_proto(cls, m: co_pb2.JobMetrics) -> JobMetrics:
        return cls(
            job_id=m.job_id,
            steps=[
                StepRow(s.step, s.loss, s.samples, s.worker_id, s.epoch, s.unix_time)
                for s in m.steps
            ],
            epochs=[
                EpochRow(e.epoch, e.test_accuracy, e.test_loss, e.unix_time, e.samples)
                for e in m.epochs
            ],
            pushes_applied=m.pushes_applied,
            pushes_rejected=dict(m.pushes_rejected),
            bytes_pushed=m.bytes_pushed,
            bytes_pulled=m.bytes_pulled,
            pulls=m.pulls,
            bytes_pushed_raw=m.bytes_pushed_raw,
            staleness=dict(sorted(m.staleness.items())),
            clock_staleness=dict(sorted(m.clock_staleness.items())),
            pushes_by_worker=dict(m.pushes_by_worker),
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
            events=[EventRow(e.unix_time, e.kind, e.worker_id, e.message) for e in m.events],
        )
