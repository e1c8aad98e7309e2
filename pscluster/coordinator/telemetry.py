"""The coordinator's Prometheus series, read from its state at scrape time.

Names and units follow Prometheus conventions (``_seconds``, base units, no unit for ratios
and counts). Labels are a job id and a worker id: both bounded by what the coordinator tracks
(running jobs, and the workers that reported on them).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pscluster.coordinator.runtime import Runtime


class CoordinatorCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rt = self.rt
        stragglers = GaugeMetricFamily(
            "pscluster_job_stragglers",
            "Workers of a running job flagged as stragglers (busy time > factor x median).",
            labels=["job_id"],
        )
        slowdown = GaugeMetricFamily(
            "pscluster_worker_slowdown",
            "A worker's busy time per batch over the median of the job's other workers.",
            labels=["job_id", "worker_id"],
        )
        busy = GaugeMetricFamily(
            "pscluster_worker_busy_seconds",
            "EWMA of a worker's busy time per batch (wall time less waits on other workers).",
            labels=["job_id", "worker_id"],
        )
        flagged = GaugeMetricFamily(
            "pscluster_worker_straggler",
            "1 if the worker is flagged as a straggler on the job, else 0.",
            labels=["job_id", "worker_id"],
        )
        with rt.lock:
            now = rt.mono()
            alive = rt.workers.alive_count()
            running = rt.book.job_ids()
            for job_id in rt.relief.job_ids():
                speeds = rt.relief.speeds(job_id, now)
                stragglers.add_metric([job_id], sum(s.straggler for s in speeds))
                for s in speeds:
                    if not s.active:
                        continue
                    slowdown.add_metric([job_id, s.worker_id], s.slowdown)
                    busy.add_metric([job_id, s.worker_id], s.busy_seconds)
                    flagged.add_metric([job_id, s.worker_id], float(s.straggler))
        yield stragglers
        yield slowdown
        yield busy
        yield flagged
        yield GaugeMetricFamily("pscluster_workers_alive", "Workers alive.", value=alive)
        yield GaugeMetricFamily(
            "pscluster_jobs_running", "Jobs being scheduled.", value=len(running)
        )


def coordinator_registry(rt: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(CoordinatorCollector(rt))
    return registry
