"""Where a job's step time goes, over time: the phases its workers report with their progress.

Each worker report says how many batches it timed and how many seconds of them went to each
phase (pull, wait, forward, backward, push, other: see :mod:`pscluster.worker.phases`). A job
keeps one point per report per worker, and when a worker has more than ``max_points`` the
oldest half are merged pairwise: a long job keeps its whole span at a coarser grain instead
of only its end. The points go out with the job's metrics (``JobMetrics.timeline``) and are
saved with its final stats; ``pscluster metrics`` sums them and ``pscluster plot`` draws them.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

MAX_POINTS_PER_WORKER = 512
_MAX_PHASES = 16  # names in one report
_MAX_NAME = 32


@dataclass
class _Point:
    unix_time: float  # the report's time: the end of the span it covers
    batches: int
    seconds: dict[str, float] = field(default_factory=dict)

    def absorb(self, later: _Point) -> None:
        self.unix_time = later.unix_time
        self.batches += later.batches
        for name, s in later.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s


def check_phases(progress: co_pb2.LeaseProgress) -> None:
    """A report's phases must be a few short names with seconds >= 0."""
    if len(progress.phase_seconds) > _MAX_PHASES:
        raise InvalidArgument(
            f"lease.phase_seconds has {len(progress.phase_seconds)} phases; expected at most "
            f"{_MAX_PHASES} (pull, wait, forward, backward, push, other)"
        )
    for name, seconds in progress.phase_seconds.items():
        if not name or len(name) > _MAX_NAME or not name.replace("_", "").isalnum():
            raise InvalidArgument(
                f"lease.phase_seconds has the phase {name[:_MAX_NAME]!r}; expected a short "
                "name such as 'pull' or 'backward'"
            )
        if not (math.isfinite(seconds) and seconds >= 0):
            raise InvalidArgument(
                f"lease.phase_seconds[{name!r}]={seconds} is invalid; expected seconds >= 0"
            )


class Timelines:
    """Per job and worker, the phase points reported so far (thread-safe)."""

    def __init__(self, max_points: int = MAX_POINTS_PER_WORKER) -> None:
        self.max_points = max(2, max_points)
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, list[_Point]]] = {}

    def record(
        self, job_id: str, worker_id: str, progress: co_pb2.LeaseProgress, unix_time: float
    ) -> None:
        """Add a (checked) report's phases; a report without any adds nothing."""
        if not progress.phase_seconds or not progress.batches:
            return
        point = _Point(unix_time, progress.batches, dict(progress.phase_seconds))
        with self._lock:
            points = self._jobs.setdefault(job_id, {}).setdefault(worker_id, [])
            points.append(point)
            if len(points) > self.max_points:
                _coarsen(points)

    def points(self, job_id: str) -> list[co_pb2.PhasePoint]:
        """The job's points, oldest first."""
        with self._lock:
            workers = {w: list(p) for w, p in self._jobs.get(job_id, {}).items()}
        out = [
            co_pb2.PhasePoint(
                unix_time=p.unix_time, worker_id=w, batches=p.batches, seconds=p.seconds
            )
            for w, points in workers.items()
            for p in points
        ]
        return sorted(out, key=lambda p: p.unix_time)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)


def _coarsen(points: list[_Point]) -> None:
    """Merge the older half of ``points`` pairwise, in place (the newest stay as they are)."""
    older = max(2, len(points) // 2)
    older += older % 2  # whole pairs
    merged: list[_Point] = []
    for i in range(0, older, 2):
        first = points[i]
        first.absorb(points[i + 1])
        merged.append(first)
    points[:older] = merged


def phase_totals(points: list[co_pb2.PhasePoint]) -> tuple[int, dict[str, float]]:
    """Batches and seconds per phase over ``points`` (for a per-step average)."""
    batches = 0
    totals: dict[str, float] = {}
    for p in points:
        batches += p.batches
        for name, s in p.seconds.items():
            totals[name] = totals.get(name, 0.0) + s
    return batches, totals
