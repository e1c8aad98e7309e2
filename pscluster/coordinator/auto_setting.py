"""What mode "auto" chooses among and what it is told: a setting, an observation, a switch.

(The decisions are in :mod:`pscluster.coordinator.auto`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pscluster.server.consistency import TrialStep


@dataclass(frozen=True)
class Consistency:
    """A setting auto may choose: a shard mode, its ssp bound and its backup workers, and
    the steps a worker takes per push."""

    mode: str
    staleness: int = 0
    backup_workers: int = 0
    local_steps: int = 1

    def describe(self) -> str:
        if self.mode == "ssp":
            text = f"ssp with staleness {self.staleness}"
        elif self.backup_workers:
            text = f"sync with {self.backup_workers} backup worker(s)"
        else:
            text = self.mode
        if self.local_steps > 1:
            text += f"{' and' if ' with ' in text else ' with'} {self.local_steps} local steps"
        return text

    @property
    def stale_mode(self) -> bool:
        """Whether the mode itself lets a push be computed on old parameters."""
        return self.mode in ("async", "ssp")

    @property
    def stale(self) -> bool:
        """Whether updates may be computed on parameters older than the newest (backup
        workers drop pushes, they never apply an old one; a local step after the first is
        on the worker's own copy)."""
        return self.stale_mode or self.local_steps > 1


SYNC = Consistency("sync")
ASYNC = Consistency("async")


@dataclass(frozen=True)
class Observation:
    now: float
    busy: Mapping[str, float]  # active, measured workers: busy seconds per batch
    losses: Sequence[float] = ()  # step losses reported since the last observation
    # Workers taking part now: no setting is chosen from the busy times of fewer measured
    # ones than that (the first reports would otherwise decide on two workers out of four).
    members: int = 0
    # Those of them not in ``busy`` (fewer batches timed than the tracker needs, or silent).
    unmeasured: Sequence[str] = ()
    # The report's seconds per phase (pscluster.worker.phases) over its ``batches``.
    phases: Mapping[str, float] = field(default_factory=dict)
    batches: int = 0
    windows: int = 0  # the pulls and pushes that took them (0: not counted by the worker)

    @property
    def missing(self) -> int:
        """How many members are not measured (counted when they are not named)."""
        return len(self.unmeasured) if self.unmeasured else max(0, self.members - len(self.busy))


@dataclass(frozen=True)
class Switch:
    """A new setting and why; or, with no reason, only a step of the trial (the setting
    stays)."""

    to: Consistency
    reason: str
    trial: TrialStep = TrialStep.NONE
