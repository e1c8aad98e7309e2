"""A worker's Prometheus series: what it trained, how long its pulls and pushes took, what it
is working on now.

Unlike the shards and the coordinator, a worker has no state to read at scrape time: these are
measured as the work happens, into a registry of the worker's own (never the process-wide
default). Series carry a ``job_id`` label; a job's series are removed when the worker forgets
the job (it ended), so a long-lived worker does not accumulate them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pscluster.worker.phases import PHASES

# Pull latency includes the time a consistency mode holds the pull (a sync barrier, an ssp
# bound): seconds are common there, so the buckets reach further than for a push.
PULL_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PUSH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class WorkerTelemetry:
    """The worker's series, in a registry of its own, and which jobs and lease they describe.

    The trainer reports what happened (``pulled``, ``pushed``, ``stepped``, ...); this object
    remembers the label values it created, so that a job's series can be removed when the job
    ends and the gauge of the current lease never shows two leases at once.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.steps, self.samples = _progress_counters(self.registry)
        self.pull_seconds, self.push_seconds = _exchange_durations(self.registry)
        self.pulled_bytes, self.pushed_bytes = _exchange_bytes(self.registry)
        self.tasks, self.task = _lease_series(self.registry)
        self.slowdown, self.injected_seconds = _injection_series(self.registry)
        self.phase_seconds = Counter(
            "pscluster_worker_phase_seconds",
            "Time the training thread spent in each phase of its steps (pull, wait, forward, "
            "backward, push, other; pscluster/worker/phases.py): they add up to the wall time.",
            ["job_id", "phase"],
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._current: tuple[str, str, str, str] | None = None
        self._task_labels: set[tuple[str, str, str]] = set()
        self._jobs: set[str] = set()

    def _job(self, job_id: str) -> None:
        with self._lock:
            self._jobs.add(job_id)

    def pulled(self, job_id: str, seconds: float, nbytes: int) -> None:
        self._job(job_id)
        self.pull_seconds.labels(job_id).observe(seconds)
        self.pulled_bytes.labels(job_id).inc(nbytes)

    def pushed(self, job_id: str, seconds: float, nbytes: int) -> None:
        self._job(job_id)
        self.push_seconds.labels(job_id).observe(seconds)
        self.pushed_bytes.labels(job_id).inc(nbytes)

    def phased(self, job_id: str, seconds: Mapping[str, float]) -> None:
        self._job(job_id)
        for phase, s in seconds.items():
            self.phase_seconds.labels(job_id, phase).inc(s)

    def stepped(self, job_id: str) -> None:
        self._job(job_id)
        self.steps.labels(job_id).inc()

    def trained(self, job_id: str, samples: int) -> None:
        self._job(job_id)
        self.samples.labels(job_id).inc(samples)

    def slept(self, seconds: float) -> None:
        self.injected_seconds.inc(seconds)

    def task_started(self, job_id: str, kind: str, epoch: int, partition: int) -> None:
        labels = (job_id, kind, str(epoch), str(partition))
        with self._lock:
            previous, self._current = self._current, labels
        if previous is not None:
            self.task.remove(*previous)
        self.task.labels(*labels).set(1)

    def task_ended(self, result: str) -> None:
        """The current lease is over: ``result`` is completed, lost or failed."""
        with self._lock:
            current, self._current = self._current, None
            if current is not None:
                self._task_labels.add((current[0], current[1], result))
        if current is None:
            return
        # Counted before the gauge drops: a scrape that finds the worker idle has the count.
        self.tasks.labels(current[0], current[1], result).inc()
        self.task.remove(*current)

    def forget_job(self, job_id: str) -> None:
        """The job ended: drop its series (their last values were scraped while it ran)."""
        with self._lock:
            known = job_id in self._jobs
            self._jobs.discard(job_id)
            tasks = {t for t in self._task_labels if t[0] == job_id}
            self._task_labels -= tasks
        if known:
            for metric in (
                self.steps,
                self.samples,
                self.pull_seconds,
                self.push_seconds,
                self.pulled_bytes,
                self.pushed_bytes,
            ):
                with contextlib.suppress(KeyError):  # never observed for this job
                    metric.remove(job_id)
        for labels in tasks:
            self.tasks.remove(*labels)
        if known:
            for phase in PHASES:
                with contextlib.suppress(KeyError):
                    self.phase_seconds.remove(job_id, phase)


def _progress_counters(r: CollectorRegistry) -> tuple[Counter, Counter]:
    """What the worker trained on: the steps the job counts and every sample processed."""
    steps = Counter(
        "pscluster_worker_steps",
        "Training steps whose gradient the shards took (the steps the job counts).",
        ["job_id"],
        registry=r,
    )
    samples = Counter(
        "pscluster_worker_samples",
        "Training samples processed (batches skipped or refused included).",
        ["job_id"],
        registry=r,
    )
    return steps, samples


def _exchange_durations(r: CollectorRegistry) -> tuple[Histogram, Histogram]:
    """How long one pull and one push to every shard took."""
    pull_seconds = Histogram(
        "pscluster_worker_pull_duration_seconds",
        "Time of one pull of the whole parameter vector from every shard, consistency "
        "waits included.",
        ["job_id"],
        buckets=PULL_SECONDS_BUCKETS,
        registry=r,
    )
    push_seconds = Histogram(
        "pscluster_worker_push_duration_seconds",
        "Time of one push of the whole gradient to every shard (each retry is one push).",
        ["job_id"],
        buckets=PUSH_SECONDS_BUCKETS,
        registry=r,
    )
    return pull_seconds, push_seconds


def _exchange_bytes(r: CollectorRegistry) -> tuple[Counter, Counter]:
    """The bytes pulls and pushes moved, as they went over the wire."""
    pulled_bytes = Counter(
        "pscluster_worker_pulled_bytes",
        "Parameter bytes pulled, in the job's pull dtype.",
        ["job_id"],
        registry=r,
    )
    pushed_bytes = Counter(
        "pscluster_worker_pushed_bytes",
        "Gradient payload bytes pushed, as encoded by the job's compression.",
        ["job_id"],
        registry=r,
    )
    return pulled_bytes, pushed_bytes


def _lease_series(r: CollectorRegistry) -> tuple[Counter, Gauge]:
    """The leases worked on, by result, and the one being worked on now."""
    tasks = Counter(
        "pscluster_worker_tasks",
        "Leases worked on, by kind (train, eval, predict) and result (completed, lost, failed).",
        ["job_id", "kind", "result"],
        registry=r,
    )
    task = Gauge(
        "pscluster_worker_task",
        "1 for the lease being worked on now (no series while idle).",
        ["job_id", "kind", "epoch", "partition"],
        registry=r,
    )
    return tasks, task


def _injection_series(r: CollectorRegistry) -> tuple[Gauge, Counter]:
    """The injected slowdown (PSC_SLOWDOWN) and the time it slept, so a straggler made on
    purpose is told apart from a real one."""
    slowdown = Gauge(
        "pscluster_worker_injected_slowdown",
        "Fault injection (PSC_SLOWDOWN): each batch's own compute is stretched to this many "
        "times its length (1: none).",
        registry=r,
    )
    injected_seconds = Counter(
        "pscluster_worker_injected_delay_seconds",
        "Time slept by the injected slowdown.",
        registry=r,
    )
    return slowdown, injected_seconds
