"""A shard's Prometheus series: its jobs' counters read at scrape time, and push latency.

Counts come from each job's own counters (:class:`pscluster.server.stats.JobCounters`, the
numbers ``GetJobStats`` reports), read when Prometheus scrapes: nothing is counted twice, and
a shard restarted from its log reports the totals it recovered rather than starting at zero.
Only latency needs measuring as it happens; :class:`ShardTelemetry` holds that histogram.

Every series has a ``job_id`` label. Its cardinality is bounded by the jobs the shard holds:
a dropped job's series disappear at the next scrape, and a push naming a job the shard does
not hold is not timed (a caller cannot mint label values).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pscluster.errors import NotFound
from pscluster.server.domain import JobStats
from pscluster.server.shard import Shard
from pscluster.server.table_telemetry import table_families

# Push latency from the call's arrival to its reply, payload transfer included: 1 ms to 30 s
# (a 16 MB push over a slow link, or a sync push that waits on a durable fsync).
PUSH_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Staleness is counted in versions (or clocks): the small values are the ones that matter for
# convergence, and powers of two keep a long tail visible in few buckets.
STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


class ShardTelemetry:
    """What a shard measures itself (the rest is read from its jobs): push latency.

    Owned by the shard's server and exposed through its :class:`ShardCollector`, never the
    process-wide default registry, so that several shards in one process (tests) keep their
    series apart. The collector yields it after pruning the series of dropped jobs, so a
    scrape never shows a job that is gone.
    """

    def __init__(self) -> None:
        self._push_seconds = Histogram(
            "pscluster_shard_push_duration_seconds",
            "Time from a push's arrival to its reply, payload transfer included, by outcome "
            "(applied, buffered, stale, late, unknown; error: refused with a status code).",
            ["job_id", "outcome"],
            buckets=PUSH_SECONDS_BUCKETS,
            registry=None,
        )
        self._lock = threading.Lock()
        self._labels: set[tuple[str, str]] = set()

    def observe_push(self, job_id: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self._labels.add((job_id, outcome))
        self._push_seconds.labels(job_id, outcome).observe(seconds)

    def forget_jobs_except(self, live: Iterable[str]) -> None:
        """Drop the latency series of jobs no longer on the shard (bounded memory)."""
        keep = set(live)
        with self._lock:
            gone = {labels for labels in self._labels if labels[0] not in keep}
            self._labels -= gone
        for labels in gone:
            self._push_seconds.remove(*labels)

    def collect(self) -> Iterable[Metric]:
        return self._push_seconds.collect()


def staleness_histogram(
    name: str, documentation: str, counts: Mapping[str, Mapping[int, int]]
) -> HistogramMetricFamily:
    """A histogram family from exact ``{staleness: pushes}`` counts, one per job.

    A histogram rather than a counter labelled by staleness: staleness is unbounded (a worker
    cut off for an hour comes back thousands of versions behind), and a label per value would
    grow the series without bound, while buckets keep it fixed and still give quantiles
    (``histogram_quantile``) and the mean (``_sum / _count``). The counts are exact integers,
    so the buckets, sum and count are exact too, not estimates.
    """
    family = HistogramMetricFamily(name, documentation, labels=["job_id"])
    for job_id, by_value in counts.items():
        buckets: list[tuple[str, float]] = []
        for bound in STALENESS_BUCKETS:
            buckets.append((str(float(bound)), float(_at_most(by_value, bound))))
        total = sum(by_value.values())
        buckets.append(("+Inf", float(total)))
        value_sum = float(sum(k * v for k, v in by_value.items()))
        family.add_metric([job_id], buckets, value_sum)
    return family


def _at_most(counts: Mapping[int, int], bound: int) -> int:
    return sum(v for k, v in counts.items() if k <= bound)


class ShardCollector(Collector):
    """Every job's counters on one shard, as Prometheus families labelled by ``job_id``."""

    def __init__(self, shard: Shard, telemetry: ShardTelemetry | None = None) -> None:
        self.shard = shard
        self.telemetry = telemetry

    def _stats(self) -> list[JobStats]:
        found = []
        for job_id in self.shard.job_ids():
            try:
                found.append(self.shard.job(job_id).stats())
            except NotFound:  # dropped between the listing and the read
                continue
        return found

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if self.telemetry is not None:
            self.telemetry.forget_jobs_except(s.job_id for s in stats)
            yield from self.telemetry.collect()
        yield GaugeMetricFamily("pscluster_shard_jobs", "Jobs held by this shard.", len(stats))
        yield from (_counter(stats, *series) for series in PUSH_COUNTERS)
        yield _rejected(stats)
        yield from (_counter(stats, *series) for series in TRAFFIC_COUNTERS)
        yield from (_gauge(stats, *series) for series in GAUGES)
        yield from table_families(stats)
        yield staleness_histogram(
            "pscluster_shard_push_staleness",
            "Version staleness of applied pushes: updates applied between a push's pull and "
            "its application.",
            {s.job_id: s.staleness for s in stats},
        )
        yield staleness_histogram(
            "pscluster_shard_push_clock_staleness",
            "Clock staleness of applied pushes: how many clocks the job had moved past the "
            "clock a push was computed at.",
            {s.job_id: s.clock_staleness for s in stats},
        )


# Series read from one field of every job's stats: (name, documentation, JobStats field).
# CounterMetricFamily adds the _total suffix to the counters' names.
PUSH_COUNTERS = (
    (
        "pscluster_shard_pushes_received",
        "Pushes that reached the job (refused ones included).",
        "pushes_received",
    ),
    (
        "pscluster_shard_pushes_applied",
        "Pushes whose gradient reached the parameters.",
        "pushes_applied",
    ),
    (
        "pscluster_shard_pushes_duplicate",
        "Retries of pushes already decided, answered again without applying them.",
        "pushes_duplicate",
    ),
)
TRAFFIC_COUNTERS = (
    ("pscluster_shard_pulls", "Pulls answered.", "pulls"),
    (
        "pscluster_shard_pushed_bytes",
        "Push payload bytes received, as sent (compressed if the job compresses).",
        "bytes_pushed",
    ),
    (
        "pscluster_shard_pushed_raw_bytes",
        "What the pushes received stand for as float32 (equal to pushed bytes uncompressed).",
        "bytes_pushed_raw",
    ),
    ("pscluster_shard_pulled_bytes", "Pull payload bytes sent.", "bytes_pulled"),
    (
        "pscluster_shard_steps_applied",
        "Optimizer steps taken (sync: one per closed step; async: one per applied push).",
        "steps_applied",
    ),
)
# A gauge of a list field counts its entries (members, excluded workers).
GAUGES = (
    (
        "pscluster_shard_parameter_version",
        "Version of the job's parameters on this shard (updates applied so far).",
        "version",
    ),
    ("pscluster_shard_clock", "The job's clock (the slowest member's).", "clock"),
    ("pscluster_shard_members", "Workers that are members of the job.", "members"),
    (
        "pscluster_shard_excluded_workers",
        "Members excluded from barriers as stragglers.",
        "excluded",
    ),
    (
        "pscluster_shard_max_clock_lead",
        "Largest lead in clocks of a member over the slowest one, seen so far.",
        "max_clock_lead",
    ),
    (
        "pscluster_shard_last_update_timestamp_seconds",
        "Unix time of the last update applied to the job's parameters (0: none yet).",
        "last_update_unix",
    ),
)


def _counter(stats: list[JobStats], name: str, doc: str, field: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["job_id"])
    for s in stats:
        family.add_metric([s.job_id], float(getattr(s, field)))
    return family


def _gauge(stats: list[JobStats], name: str, doc: str, field: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["job_id"])
    for s in stats:
        value = getattr(s, field)
        family.add_metric([s.job_id], float(len(value) if isinstance(value, list) else value))
    return family


def _rejected(stats: list[JobStats]) -> CounterMetricFamily:
    rejected = CounterMetricFamily(
        "pscluster_shard_pushes_rejected",
        "Pushes refused, by reason (invalid, not_member, nonfinite, stale, late, ...).",
        labels=["job_id", "reason"],
    )
    for s in stats:
        for reason, count in sorted(s.pushes_rejected.items()):
            rejected.add_metric([s.job_id, reason], float(count))
    return rejected


def shard_registry(shard: Shard) -> tuple[CollectorRegistry, ShardTelemetry]:
    """A registry with the shard's collector and its latency histogram (give the telemetry
    to the servicer, the registry to :func:`pscluster.telemetry.serve_metrics`)."""
    registry = CollectorRegistry()
    telemetry = ShardTelemetry()
    registry.register(ShardCollector(shard, telemetry))
    return registry, telemetry
