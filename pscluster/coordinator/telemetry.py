"""The coordinator's Prometheus series, read from its state at scrape time.

Names and units follow Prometheus conventions (``pscluster_coordinator_`` prefix, base units,
``_seconds``, ``_total`` on counters, no unit for ratios and counts). Labels are a job id and a
worker id: both bounded by what the coordinator tracks (running jobs, and the workers that
reported on them); a job's series go when it stops running.

The first straggler series (``pscluster_job_stragglers``, ``pscluster_worker_straggler``,
``pscluster_worker_slowdown``, ``pscluster_worker_busy_seconds``, ``pscluster_workers_alive``,
``pscluster_jobs_running``) predate the prefix; they are still exported under their old names
for the dashboards and tests that use them, beside the prefixed ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pscluster.coordinator import store as st
from pscluster.coordinator.lease_values import EVAL, TRAIN
from pscluster.coordinator.runtime import Runtime

_PREFIX = "pscluster_coordinator_"
# Every job state, so that a state with no jobs reads 0 rather than vanishing.
_STATES = (st.PENDING, st.RUNNING, st.COMPLETED, st.FAILED, st.CANCELLED)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, doc, labels=labels)


_JOB = ["job_id"]
_WORKER = ["job_id", "worker_id"]
# The straggler series by key: (name after the prefix, help, labels). Each is exported with
# the ``pscluster_coordinator_`` prefix and, if it predates it, under its old ``pscluster_``
# name too (the same help and values).
_STRAGGLER_SERIES = {
    "stragglers": (
        "job_stragglers",
        "Workers of a running job flagged as stragglers (busy time > factor x median).",
        _JOB,
    ),
    "slowdown": (
        "worker_slowdown",
        "A worker's busy time per batch over the median of the job's other workers.",
        _WORKER,
    ),
    "busy": (
        "worker_busy_seconds",
        "EWMA of a worker's busy time per batch (wall time less waits on other workers).",
        _WORKER,
    ),
    "flagged": (
        "worker_straggler",
        "1 if the worker is flagged as a straggler on the job, else 0.",
        _WORKER,
    ),
    "excluded": (
        "worker_excluded",
        "1 if the job's barriers no longer wait for the worker (a straggler), else 0.",
        _WORKER,
    ),
}
_LEGACY_STRAGGLER_SERIES = ("stragglers", "slowdown", "busy", "flagged")


def _straggler_family(prefix: str, key: str) -> GaugeMetricFamily:
    name, doc, labels = _STRAGGLER_SERIES[key]
    return GaugeMetricFamily(prefix + name, doc, labels=labels)


class CoordinatorCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        yield from self._stragglers()
        yield from self._workers_and_leases()
        yield from self._jobs()

    def _stragglers(self) -> Iterator[Metric]:
        rt = self.rt
        legacy = {key: _straggler_family("pscluster_", key) for key in _LEGACY_STRAGGLER_SERIES}
        current = {key: _straggler_family(_PREFIX, key) for key in _STRAGGLER_SERIES}
        with rt.lock:
            now = rt.mono()
            for job_id in rt.relief.job_ids():
                speeds = rt.relief.speeds(job_id, now)
                for family in (legacy, current):
                    family["stragglers"].add_metric([job_id], sum(s.straggler for s in speeds))
                for s in speeds:
                    if not s.active:
                        continue
                    labels = [job_id, s.worker_id]
                    for family in (legacy, current):
                        family["slowdown"].add_metric(labels, s.slowdown)
                        family["busy"].add_metric(labels, s.busy_seconds)
                        family["flagged"].add_metric(labels, float(s.straggler))
                    current["excluded"].add_metric(labels, float(s.excluded))
        yield from legacy.values()
        yield from current.values()

    def _workers_and_leases(self) -> Iterator[Metric]:
        rt = self.rt
        with rt.lock:
            workers = rt.workers.snapshot()
            running = rt.book.job_ids()
            leases = rt.book.outstanding()
        alive = sum(w.alive for w in workers)
        yield GaugeMetricFamily("pscluster_workers_alive", "Workers alive.", value=alive)
        yield GaugeMetricFamily(
            "pscluster_jobs_running", "Jobs being scheduled.", value=len(running)
        )
        by_state = _gauge(
            "workers", "Registered workers: alive, or dead and still listed.", ["state"]
        )
        by_state.add_metric(["alive"], alive)
        by_state.add_metric(["dead"], len(workers) - alive)
        yield by_state
        by_kind = _gauge("leases", "Outstanding leases, by kind (train, eval).", ["kind"])
        counts = Counter(lease.kind for lease in leases)
        for kind in sorted({TRAIN, EVAL, *counts}):
            by_kind.add_metric([kind], counts.get(kind, 0))
        yield by_kind
        per_job = _gauge("job_leases", "Outstanding leases of a running job.", ["job_id"])
        holders = _gauge("job_workers", "Workers holding a lease on a running job.", ["job_id"])
        for job_id in running:
            mine = [lease for lease in leases if lease.job_id == job_id]
            per_job.add_metric([job_id], len(mine))
            holders.add_metric([job_id], len({lease.worker_id for lease in mine}))
        yield per_job
        yield holders

    def _jobs(self) -> Iterator[Metric]:
        rt = self.rt
        jobs = rt.store.list_jobs()
        states = Counter(job.state for job in jobs)
        by_state = _gauge("jobs", "Jobs known to the coordinator, by state.", ["state"])
        for state in sorted({*_STATES, *states}):
            by_state.add_metric([state], states.get(state, 0))
        yield by_state
        epoch = _gauge("job_epoch", "Epochs a running job has finished training.", ["job_id"])
        epochs = _gauge("job_epochs", "Epochs a running job trains for.", ["job_id"])
        progress = _gauge(
            "job_progress_ratio",
            "Share of a running job's partitions trained (0 to 1).",
            ["job_id"],
        )
        steps = CounterMetricFamily(
            _PREFIX + "job_steps",
            "Training steps workers reported on a running job.",
            labels=["job_id"],
        )
        samples = CounterMetricFamily(
            _PREFIX + "job_samples", "Training samples in those steps.", labels=["job_id"]
        )
        accuracy = _gauge(
            "job_test_accuracy",
            "Test accuracy of a running job's last evaluated epoch (absent before the first).",
            ["job_id"],
        )
        loss = _gauge("job_last_loss", "Last training loss a worker reported.", ["job_id"])
        for job in jobs:
            if job.state != st.RUNNING:
                continue
            labels = [job.job_id]
            with rt.lock:
                sched = rt.book.schedule(job.job_id) if rt.book.has_job(job.job_id) else None
                done = sched.partitions_done() if sched else None
                current = sched.epoch if sched else job.epoch
            if done is None:
                done = job.epoch * job.partitions + len(job.done_partitions)
            epoch.add_metric(labels, min(current, job.epochs))
            epochs.add_metric(labels, job.epochs)
            progress.add_metric(labels, min(1.0, done / max(1, job.epochs * job.partitions)))
            steps.add_metric(labels, job.steps)
            samples.add_metric(labels, job.samples)
            if job.test_accuracy >= 0:
                accuracy.add_metric(labels, job.test_accuracy)
            if job.steps:
                loss.add_metric(labels, job.last_loss)
        yield from (epoch, epochs, progress, steps, samples, accuracy, loss)


def coordinator_registry(rt: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(CoordinatorCollector(rt))
    return registry
