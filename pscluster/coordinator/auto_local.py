"""Mode "auto"'s local steps: how many steps a worker takes between a pull and a push.

A push per step pays a pull and a push of the whole model for every batch. Local SGD (Lin et
al. 2020; Downpour SGD's n_fetch = n_push, Dean et al. 2012) takes ``k`` steps on the
worker's own copy between the two, which divides that cost by ``k``; its price is that the
workers see each other's progress once per window, so, like staleness, it is tried only where
the loss judge (:mod:`pscluster.coordinator.auto_loss`) watches it.

Where the time goes is measured, not assumed: the workers report the seconds of each phase
with their progress (pscluster.worker.phases). With ``r`` the seconds of a window's pull and
push over the seconds of a batch's forward and backward, a batch costs about ``1 + r`` times
its compute with one step per push and ``1 + r / k`` with ``k``. Local steps begin once ``r``
reaches ``enter``; ``k`` is the least that brings ``r / k`` down to ``aim`` (at most
``max_steps``); they end once ``r`` falls below ``enter`` times the Schmitt factor, and ``k``
changes only for one at least twice or half as large, so a noisy ``r`` does not flap it.

Pure: fed phase sums, answers a number and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pscluster.errors import InvalidArgument

COMMUNICATION = ("pull", "push")  # the phases a window pays once, whatever its steps
COMPUTE = ("forward", "backward")  # those each batch pays


@dataclass(frozen=True)
class LocalStepRules:
    enter: float = 0.5  # r at which local steps begin
    aim: float = 0.25  # the r / k that the number of steps aims for
    max_steps: int = 8
    alpha: float = 0.3  # weight of a new report in the smoothed seconds
    out: float = 0.8  # local steps end below enter * out (Schmitt trigger)

    def __post_init__(self) -> None:
        if not (0 < self.aim <= self.enter and self.max_steps >= 1 and 0 < self.alpha <= 1):
            raise InvalidArgument(f"auto local-step rules out of range: {self}")


class CommunicationMeter:
    """The smoothed seconds of a window's pull and push and of a batch's compute, over every
    report of the job's workers."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.window_seconds: float | None = None  # pull + push, per window
        self.batch_seconds: float | None = None  # forward + backward, per batch

    def add(
        self, phases: Mapping[str, float], batches: int, windows: int, local_steps: int
    ) -> None:
        """One report: ``batches`` batches timed in ``windows`` windows, as the worker
        counted them: a window ends early at its lease's end, and a report may straddle a
        switch. A worker that does not count them (0) is taken to have run ``local_steps``
        per window, the number in force."""
        if batches <= 0 or not phases:
            return
        pushes = float(windows) if windows > 0 else max(1.0, batches / max(1, local_steps))
        talk = sum(phases.get(p, 0.0) for p in COMMUNICATION) / pushes
        work = sum(phases.get(p, 0.0) for p in COMPUTE) / batches
        self.window_seconds = self._smooth(self.window_seconds, talk)
        self.batch_seconds = self._smooth(self.batch_seconds, work)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    @property
    def ratio(self) -> float | None:
        """A window's communication over a batch's compute (None: not measured yet)."""
        if self.window_seconds is None or not self.batch_seconds:
            return None
        return self.window_seconds / self.batch_seconds


def local_steps_for(ratio: float | None, current: int, rules: LocalStepRules) -> tuple[int, str]:
    """The local steps per push for communication ``ratio`` times a batch's compute, given
    the number in force (its threshold is the lower way out), and why ("" for one step
    without a measurement)."""
    if ratio is None:
        return 1, ""
    local = current > 1
    if ratio < rules.enter * (rules.out if local else 1.0):
        return 1, (
            f"a window's pull and push take {ratio:.2f}x a batch's compute, too little to "
            "save by local steps"
        )
    k = min(rules.max_steps, max(2, math.ceil(ratio / rules.aim)))
    if local and current / 2 < k < current * 2:
        k = current  # close enough: a new number is not worth a switch
    return k, (
        f"a window's pull and push take {ratio:.2f}x a batch's compute, so {k} local steps per push"
    )


class LocalSteps:
    """One auto job's local steps: the meter, and the pause a verdict against them imposes
    (a hold that doubles with each such verdict, as the staleness ladder's does)."""

    def __init__(self, rules: LocalStepRules, allowed: bool, hold_seconds: float) -> None:
        self.rules = rules
        self.allowed = allowed  # False: a job that cannot take them (tables, dgc)
        self.meter = CommunicationMeter(rules.alpha)
        self.banned_until = -math.inf
        self._hold = hold_seconds

    def choose(self, now: float, current: int) -> tuple[int, str]:
        """The number for now, given the one in force, and why ("": one, nothing to say)."""
        if not self.allowed or now < self.banned_until:
            return 1, ""
        return local_steps_for(self.meter.ratio, current, self.rules)

    def ban(self, now: float) -> float:
        """A verdict against them: none for a hold from ``now``; returns its seconds."""
        held = self._hold
        self.banned_until, self._hold = now + held, held * 2
        return held
