"""Which workers of a job are stragglers: an EWMA of each worker's busy time per batch.

Workers report, with their progress, how long their batches took: the wall time, and the
busy time, which is the wall time less what their pulls waited on other workers (the shards
say how long the consistency mode held each pull). Detection uses the busy time: in sync mode
every worker's wall time per step is the barrier's, so the wall time cannot tell the slow
worker from those waiting on it, while the busy time (compute and transfers) is the worker's
own speed.

A worker is flagged when its EWMA exceeds ``factor`` times the median of the job's *other*
active workers. The others, not all: with two workers the median of both is their mean, which
no worker can exceed twice over, so a median over all could never flag anyone in a pair. It
is cleared below ``factor / 1.25``, so a worker hovering at the threshold does not flap.

Pure logic: times are ``time.monotonic()`` values passed in, and the caller holds the
coordinator lock around every call.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from pscluster.errors import InvalidArgument

DEFAULT_FACTOR = 2.0
DEFAULT_ALPHA = 0.1
DEFAULT_GRACE_SECONDS = 5.0
# A worker must have this many batches timed before it is judged or counted in a median.
MIN_BATCHES = 10
_HYSTERESIS = 1.25


@dataclass(frozen=True)
class StragglerSettings:
    factor: float = DEFAULT_FACTOR
    alpha: float = DEFAULT_ALPHA
    mitigate: bool = True
    grace_seconds: float = DEFAULT_GRACE_SECONDS

    @classmethod
    def parse(
        cls, factor: float, alpha: float, no_mitigation: bool, grace_seconds: float
    ) -> StragglerSettings:
        """From the job spec's StragglerConfig, where zeros mean the defaults."""
        factor = factor or DEFAULT_FACTOR
        alpha = alpha or DEFAULT_ALPHA
        grace = grace_seconds or DEFAULT_GRACE_SECONDS
        if not 1.0 < factor <= 1000.0:
            raise InvalidArgument(
                f"stragglers.factor={factor} is out of range; expected > 1 (e.g. 2: flag a "
                "worker twice as slow as the median), or 0 for the default"
            )
        if not 0.0 < alpha <= 1.0:
            raise InvalidArgument(
                f"stragglers.alpha={alpha} is out of range; expected (0, 1], or 0 for 0.1"
            )
        if not 0.0 < grace <= 86_400.0:
            raise InvalidArgument(
                f"stragglers.grace_seconds={grace_seconds} is out of range; expected seconds "
                "> 0, or 0 for the default 5"
            )
        return cls(factor, alpha, not no_mitigation, grace)


@dataclass
class Speed:
    """One worker's timings on one job."""

    busy: float = 0.0  # EWMA, seconds per batch
    step: float = 0.0  # EWMA, seconds per batch
    batches: int = 0
    last_report: float = 0.0
    slowdown: float = 0.0  # busy time over the median of the others; 0: not known
    flagged_since: float | None = None


@dataclass(frozen=True)
class Change:
    worker_id: str
    kind: str  # "straggler" | "recovered"
    message: str


def outliers(busy: Mapping[str, float], factor: float) -> dict[str, float]:
    """Workers whose busy time is at least ``factor`` times the median of the others', with
    that ratio (mode auto's backup workers). From the slowest down, stopping at the first
    that is not one: O(n log n) per call, which runs under the coordinator's lock."""
    ranked = sorted(busy.items(), key=lambda item: item[1])
    values = [t for _, t in ranked]
    out: dict[str, float] = {}
    for index in range(len(ranked) - 1, -1, -1):
        worker, t = ranked[index]
        median = _median_without(values, index)
        ratio = t / median if median else 0.0
        if ratio < factor:
            break
        out[worker] = ratio
    return out


def _median_without(values: list[float], index: int) -> float | None:
    """The median of sorted ``values`` without the one at ``index``; None if none is left."""
    n = len(values) - 1
    if n <= 0:
        return None

    def at(k: int) -> float:  # the k-th of the others, in order
        return values[k if k < index else k + 1]

    middle = n // 2
    return at(middle) if n % 2 else (at(middle - 1) + at(middle)) / 2


class SpeedTracker:
    """The straggler detector of one job."""

    def __init__(self, settings: StragglerSettings, active_seconds: float = 10.0) -> None:
        self.settings = settings
        # A worker that reported nothing for this long has left the job (for now): it is not
        # in the others' median, and is neither flagged nor cleared until it reports again.
        self.active_seconds = active_seconds
        self._speeds: dict[str, Speed] = {}

    def record(self, worker_id: str, batches: int, busy: float, step: float, now: float) -> None:
        """Fold ``batches`` batches that took ``busy`` / ``step`` seconds in all."""
        if batches <= 0:
            return
        s = self._speeds.setdefault(worker_id, Speed())
        mean_busy, mean_step = max(0.0, busy) / batches, max(0.0, step) / batches
        if s.batches == 0:
            s.busy, s.step = mean_busy, mean_step
        else:
            # n batches at once weigh as n successive EWMA updates with the same value.
            w = 1.0 - (1.0 - self.settings.alpha) ** batches
            s.busy += w * (mean_busy - s.busy)
            s.step += w * (mean_step - s.step)
        s.batches += batches
        s.last_report = now

    def assess(self, now: float) -> list[Change]:
        """Recompute every active worker's slowdown; the flags raised or cleared.

        One sort, then each worker's median of the others by index: O(n log n) for n
        workers (a median per worker over a copied list was O(n^2 log n): 36 ms a report
        at 500 workers, under the coordinator's lock)."""
        changes: list[Change] = []
        judged = sorted(
            ((s.busy, w, s) for w, s in self._speeds.items() if self._judged(s, now)),
            key=lambda t: t[0],
        )
        values = [b for b, _, _ in judged]
        for index, (_, worker_id, s) in enumerate(judged):
            change = self._judge(worker_id, s, _median_without(values, index), now)
            if change is not None:
                changes.append(change)
        return changes

    def _judge(self, worker_id: str, s: Speed, median: float | None, now: float) -> Change | None:
        if median is None:
            s.slowdown = 0.0
            if s.flagged_since is None:
                return None
            s.flagged_since = None  # nobody left to be slower than
            return Change(
                worker_id,
                "recovered",
                f"worker {worker_id} is no longer a straggler: no other active worker to "
                "compare with",
            )
        s.slowdown = s.busy / median if median > 0 else 0.0
        k = self.settings.factor
        if s.flagged_since is None and s.slowdown > k:
            s.flagged_since = now
            return Change(
                worker_id,
                "straggler",
                f"worker {worker_id} is a straggler: {s.busy * 1000:.0f} ms per batch, "
                f"{s.slowdown:.1f}x the median of the others ({median * 1000:.0f} ms; "
                f"threshold {k:g}x)",
            )
        if s.flagged_since is not None and s.slowdown < k / _HYSTERESIS:
            s.flagged_since = None
            return Change(
                worker_id,
                "recovered",
                f"worker {worker_id} is no longer a straggler: {s.slowdown:.1f}x the median "
                "of the others",
            )
        return None

    def _judged(self, s: Speed, now: float) -> bool:
        return s.batches >= MIN_BATCHES and now - s.last_report <= self.active_seconds

    def is_straggler(self, worker_id: str) -> bool:
        s = self._speeds.get(worker_id)
        return s is not None and s.flagged_since is not None

    def slowdown(self, worker_id: str) -> float:
        s = self._speeds.get(worker_id)
        return 0.0 if s is None else s.slowdown

    def stragglers(self) -> list[str]:
        return sorted(w for w, s in self._speeds.items() if s.flagged_since is not None)

    def share(self, worker_id: str) -> float:
        """The fraction of a normal lease to give this worker: its speed relative to the
        others for a straggler (1/slowdown), 1 for everyone else."""
        s = self._speeds.get(worker_id)
        if s is None or s.flagged_since is None or s.slowdown <= 1.0:
            return 1.0
        return 1.0 / s.slowdown

    def excluded(self, now: float) -> list[str]:
        """Stragglers flagged for at least the grace period: ssp stops waiting for them."""
        grace = self.settings.grace_seconds
        return sorted(
            w
            for w, s in self._speeds.items()
            if s.flagged_since is not None and now - s.flagged_since >= grace
        )

    def step_seconds(self, worker_id: str) -> float | None:
        s = self._speeds.get(worker_id)
        return s.step if s is not None and s.batches else None

    def median_step_seconds(self, now: float) -> float | None:
        """The typical wall time per batch of the job's active, unflagged workers."""
        steps = [
            s.step
            for s in self._speeds.values()
            if self._judged(s, now) and s.flagged_since is None
        ]
        return statistics.median(steps) if steps else None

    def snapshot(self, now: float) -> dict[str, tuple[Speed, bool]]:
        """Copies of every worker's timings, with whether it is active."""
        return {
            w: (Speed(**vars(s)), now - s.last_report <= self.active_seconds)
            for w, s in self._speeds.items()
        }
