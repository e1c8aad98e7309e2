"""Mode "auto"'s judge of convergence: does the setting in force cost the job its progress?

Time to a target is the updates it needs times the time per update. Waiting (sync) shows in
the second and is measured by the busy times; staleness (async, ssp) shows only in the
first, so it is measured here, on the step losses the workers report. The losses are cut
into disjoint blocks of ``block`` steps and each block's mean compared once with the one
before it (noise then gets one chance per block, not one per report). A stale setting is
judged to cost progress when, between two blocks measured under it:

- the loss is not finite (at once);
- or it *rose*: by ``rise`` of the older block's mean and by at least ``rise_floor`` of where
  the job began (so that the jitter of a loss near zero, 0.05 to 0.08, is no rise, and a loss
  climbing back up is; a loss that blows up stays up: digits at lr 0.2 under async went from
  2.1 to 7.8 and on);
- or it *stalled*: it fell by less than ``min_drop`` while still above ``settled`` of where
  the job began. A job that learns halves its loss early (digits under async: a block of 32
  steps falls by 30-40% while it is high), while staleness that outruns the learning rate
  leaves it wandering near where it began (the same model at lr 0.2 under async: 7-10% a
  block); once the loss is low, a slowing fall is convergence, not staleness, and only a rise
  counts.

A rise or a stall is a verdict only in two blocks in a row against the same older one: one
block alone can spike (a model with BatchNorm on noisy rows under plain sync: 0.08, 0.28,
0.14) or pause (digits at batch 8 under async: 1.44, 1.47, then down). And only where it stands
clear of the two blocks' noise: the newer mean, lowered by ``z`` standard errors of the
difference of the means (from each block's own spread of step losses), must still have risen,
or still not have fallen by ``min_drop``. A model that learns on noisy rows swings from block
to block (wine with 15% of its labels wrong, batch 8, under async: 0.84, 1.03, 0.74, 0.63,
0.71, each step's loss spread about as wide as its mean) and settles well above half its first
loss, which the stall rule alone took for staleness in nearly every block. Staleness that
outruns the learning rate looks the other way: a model whose outputs stay near uniform gives
nearly the same loss on every batch (digits at lr 0.2 under async: 2.35, spread 0.06), so its
stall is clear of the noise at once. Where the job began is its first block's median, which a
blow-up within that block does not move. ``bench/auto_judge.py`` replays real loss curves of
both kinds through these rules. A loss that began at or below zero (the log-likelihood of a
density) is judged by the size of its changes, and on rises only.

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
    z: float = 1.64  # standard errors a change must stand clear of the blocks' noise

    def __post_init__(self) -> None:
        fractions = (self.rise_floor, self.min_drop, self.settled)
        bad = self.block < 2 or self.rise <= 0 or self.z < 0
        if bad or not all(0 <= f < 1 for f in fractions):
            raise InvalidArgument(f"auto loss rules out of range: {self}")


@dataclass(frozen=True)
class Block:
    """One block's mean step loss and the standard error of that mean (0: not finite)."""

    mean: float
    error: float

    @classmethod
    def of(cls, losses: list[float]) -> Block:
        mean = statistics.fmean(losses)
        if not math.isfinite(mean):
            return cls(mean, 0.0)
        return cls(mean, statistics.stdev(losses, mean) / math.sqrt(len(losses)))


class LossJudge:
    """Block means of one job's step losses; :meth:`feed` says when a block shows the
    setting in force costing progress. :meth:`restart` at each switch: a setting is judged
    only on blocks measured under it (the job's first block stays the reference)."""

    def __init__(self, rules: LossRules | None = None) -> None:
        self.rules = rules or LossRules()
        self._block: list[float] = []
        self._previous: Block | None = None
        self.first: float | None = None
        # The last block the last :meth:`feed` judged without a verdict, while none since the
        # last restart rose or stalled (None: none), which mode auto's trial copy may move up
        # to (:meth:`clearly_below`): parameters that a stale setting has once set back are
        # no place to go back to, however low a later block's loss.
        self.passed: Block | None = None
        # The last step losses, whatever the setting (a restart keeps them).
        self._recent: deque[float] = deque(maxlen=self.rules.block)
        # The last block rose or stalled: one more against the same older block is a verdict.
        self._doubted = False
        # A block rose or stalled since the last restart: nothing passes for good any more.
        self._troubled = False

    def restart(self) -> None:
        self._block.clear()
        self._previous = None
        self.passed = None
        self._doubted = False
        self._troubled = False

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
            block = Block.of(self._block)
            if self.first is None and math.isfinite(block.mean):
                # Where the loss began: the median, which a blow-up within the first block
                # does not move (digits at lr 0.2 under async: a mean of 5.7, a median of 2.3).
                self.first = statistics.median(self._block)
            self._block.clear()
            if judged and self._previous is not None and verdict is None:
                verdict = self._judge(self._previous, block, stalls)
                if verdict is not None and math.isfinite(block.mean) and not self._doubted:
                    self._doubted = self._troubled = True
                    verdict = None
                    continue  # the older block stays the one to compare the next with
                if verdict is None and not self._troubled:
                    self.passed = block
            self._doubted = False
            self._previous = block
        return verdict

    def clearly_below(self, block: Block, loss: float) -> bool:
        """Whether ``block``'s mean, with its noise, is below ``settled`` of ``loss``:
        progress worth a new trial copy, not a swing (docs/architecture.md, "Mode auto": in
        tests/e2e/test_auto.py's scenario, undos to copies taken under async reached 95% in
        6 of 16 runs, undos to where async began in 32 of 32)."""
        return block.mean + self.rules.z * block.error < loss * self.rules.settled

    def _noise(self, older: Block, newer: Block) -> float:
        """How far the newer block's mean may lie from where the loss really stands: ``z``
        standard errors of the difference of the two means."""
        return self.rules.z * math.hypot(older.error, newer.error)

    def _rose(self, older: Block, newer: Block) -> bool:
        r, first = self.rules, self.first or older.mean
        # By the least it plausibly rose, against the losses' size (a loss may be negative)
        rise = newer.mean - self._noise(older, newer) - older.mean
        return rise > r.rise * abs(older.mean) and rise > r.rise_floor * abs(first)

    def _judge(self, old: Block, new: Block, stalls: bool) -> str | None:
        r, n, first = self.rules, self.rules.block, self.first or old.mean
        older, newer, noise = old.mean, new.mean, self._noise(old, new)
        if not math.isfinite(newer):
            return f"the training loss is not finite ({newer}) over the last {n} steps"
        if self._rose(old, new):
            return (
                f"the mean training loss rose from {older:.4g} to {newer:.4g} over two blocks "
                f"of {n} steps (beyond their noise, {noise:.2g})"
            )
        # Fell by less than min_drop even had it fallen by the noise more; a loss that began at
        # or below zero has no floor to measure a fall against, and is judged on rises only.
        stalled = older - (newer - noise) < r.min_drop * older
        if stalls and stalled and first > 0 and newer > first * r.settled:
            moved = f"fell only {1 - newer / older:.0%}" if newer < older else "did not fall"
            return (
                f"the mean training loss {moved} ({older:.4g} to {newer:.4g}) over two blocks "
                f"of {n} steps while still at {newer / first:.0%} of where it began"
            )
        return None
