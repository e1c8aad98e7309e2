"""Mode "auto"'s judge of convergence: does the setting in force cost the job its progress?

Time to a target is the updates it needs times the time per update. Waiting (sync) shows in
the second and is measured by the busy times; staleness (async, ssp) shows only in the
first, so it is measured here, on the step losses the workers report. The losses are cut
into disjoint blocks of ``block`` steps and each block's mean compared once with the one
before it (noise then gets one chance per block, not one per report). A stale setting is
judged to cost progress when, between two blocks measured under it:

- the loss is not finite, or it *rose*: by ``rise`` of the older block's mean and by at least
  ``rise_floor`` of the job's first block (so that the jitter of a loss near zero, 0.05 to
  0.08, is no rise, and a loss climbing back up is), in two blocks in a row against the same
  older one (a loss that blows up stays up: digits at lr 0.2 under async went from 2.1 to 7.8
  and on; one block alone can spike, as a model with BatchNorm on noisy rows did under plain
  sync, 0.08 to 0.28 and back to 0.14);
- or it *stalled*: it fell by less than ``min_drop`` while still above ``settled`` of the
  job's first block. A job that learns halves its loss early (digits under async: a block of
  32 steps falls by 30-40% while it is high), while staleness that outruns the learning rate
  leaves it wandering near where it began (the same model at lr 0.2 under async: 7-10% a
  block); once the loss is low, a slowing fall is convergence, not staleness, and only a
  rise counts.

Local steps under a mode without staleness (sync) are judged on the first rule only: their
failure is drift between the workers' copies, which climbs, while a slow start under them is
what synchronous training shows while momentum builds (digits at lr 0.05 fell 10% over its
first two blocks under sync with 8 local steps, and still reached 95% sooner than with any
setting of one step per push: bench/auto.py).

Pure: fed losses, answers a reason or None.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from pscluster.errors import InvalidArgument


@dataclass(frozen=True)
class LossRules:
    block: int = 32
    rise: float = 0.5
    rise_floor: float = 0.25
    min_drop: float = 0.2
    settled: float = 0.5

    def __post_init__(self) -> None:
        fractions = (self.rise_floor, self.min_drop, self.settled)
        if self.block < 2 or self.rise <= 0 or not all(0 <= f < 1 for f in fractions):
            raise InvalidArgument(f"auto loss rules out of range: {self}")


class LossJudge:
    """Block means of one job's step losses; :meth:`feed` says when a block shows the
    setting in force costing progress. :meth:`restart` at each switch: a setting is judged
    only on blocks measured under it (the job's first block stays the reference)."""

    def __init__(self, rules: LossRules | None = None) -> None:
        self.rules = rules or LossRules()
        self._block: list[float] = []
        self._previous: float | None = None
        self.first: float | None = None
        # The mean of the last block the last :meth:`feed` judged without a verdict (None:
        # none), which mode auto's trial copy may move up to.
        self.passed: float | None = None
        # The last step losses, whatever the setting (a restart keeps them).
        self._recent: deque[float] = deque(maxlen=self.rules.block)
        self._rising = False  # the last block rose; one more against the same older is a verdict

    def restart(self) -> None:
        self._block.clear()
        self._previous = None
        self.passed = None
        self._rising = False

    @property
    def recent(self) -> float:
        """The mean of the last ``block`` step losses (fewer at the start; inf: none yet):
        where the loss stands when a switch takes a trial copy."""
        return statistics.fmean(self._recent) if self._recent else math.inf

    def feed(self, losses: Iterable[float], judged: bool, stalls: bool = True) -> str | None:
        """Add step losses; with ``judged`` (the setting in force is stale), why the last
        completed block says the setting costs progress, or None; ``stalls``: a stall is a
        verdict too (else only a rise or a non-finite loss)."""
        verdict = None
        self.passed = None
        for loss in losses:
            self._block.append(loss)
            self._recent.append(loss)
            if len(self._block) < self.rules.block:
                continue
            mean = statistics.fmean(self._block)
            self._block.clear()
            if self.first is None and math.isfinite(mean):
                self.first = mean
            if judged and self._previous is not None and verdict is None:
                if self._rose(self._previous, mean) and not self._rising:
                    self._rising = True
                    continue  # the older block stays the one to compare the next with
                verdict = self._judge(self._previous, mean, stalls)
                if verdict is None:
                    self.passed = mean
            self._rising = False
            self._previous = mean
        return verdict

    def _rose(self, older: float, newer: float) -> bool:
        r, first = self.rules, self.first or older
        return newer > older * (1 + r.rise) and newer - older > r.rise_floor * first

    def _judge(self, older: float, newer: float, stalls: bool) -> str | None:
        r, n, first = self.rules, self.rules.block, self.first or older
        if not math.isfinite(newer):
            return f"the training loss is not finite ({newer}) over the last {n} steps"
        if self._rose(older, newer):  # (and the block before this one rose too)
            return (
                f"the mean training loss rose from {older:.4g} to {newer:.4g} over two blocks "
                f"of {n} steps"
            )
        if stalls and newer > older * (1 - r.min_drop) and newer > first * r.settled:
            moved = f"fell only {1 - newer / older:.0%}" if newer < older else "did not fall"
            return (
                f"the mean training loss {moved} ({older:.4g} to {newer:.4g}) over {n} steps "
                f"while still at {newer / first:.0%} of where it began"
            )
        return None
