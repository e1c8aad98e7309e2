"""Mode "auto": which consistency a running job should have, from what its workers measure.

Pure decision logic (no sockets, no clocks: times are passed in). The coordinator feeds it an
:class:`Observation` whenever a worker reports (each worker's busy seconds per batch, as the
straggler tracker smooths them, and the step losses reported since); it answers with a
:class:`Switch` and the reason for it, or None. The executor tells the job's shards
(``SetConsistency``) and the reason becomes the job's event.

Time to a target accuracy is the updates it needs times the time per update. Waiting for
workers raises the second; staleness may raise the first, or not at all: on the digits job
async, which never waits, reached 95% first in every scenario measured (bench/auto.py),
its updates stale by a few versions costing it no epochs. Neither is assumed; both are
measured, and the setting follows them on a ladder of three rungs:

- *free* (where a job starts): async. Nobody waits for anybody, so the workers' speeds do
  not matter; what may go wrong is convergence, which :mod:`pscluster.coordinator.auto_loss`
  watches on the loss curve (a loss that rises, or stalls while still high);
- *staleness-free*, on that judge's verdict: sync, with backup workers when a few workers
  are much slower than the rest (busy time per batch ``outlier`` times the median of the
  others or more: a step closes without the last ``k`` pushes, Chen et al. 2016, so the fast
  workers stop waiting for them, and still nothing is stale; at a verdict before every
  member is measured, those not measured yet are the ones behind, see :func:`_behind`);
- *bounded*, once the staleness-free rung has held for a hold without a new verdict: as the
  one below, but a spread of speeds without outliers gets ssp, its bound from the spread (a
  worker ``spread`` times as fast as the slowest gains that many clocks per clock of it).
  After another hold without a verdict the job is back at the free rung.

On any rung the workers also take local steps between a pull and a push where a window's
communication outweighs their compute (:mod:`pscluster.coordinator.auto_local`), then with no
backup workers (a push refused as late would throw its whole window away), and a job
whose first report calls for them starts on the staleness-free rung (see
``AutoConsistency._open``); the loss judge watches them as it watches staleness.

Hysteresis, so that it never flaps: a verdict needs three blocks of steps measured under the
stale setting (two in a row against the first; two for a loss that is not finite) and sends
the job down to the staleness-free rung at once, for a hold that doubles with each verdict
(so a job whose staleness hurts tries it again less and less often); a setting chosen from
busy times is left only for another one that every one of the last ``confirm`` observations
agreed on, at least ``dwell_seconds`` after the last switch;
every threshold has a way in and a lower way out (``_OUT``), wider than the noise of the
smoothed busy times; and an ssp bound is only changed for one at least twice or half as large.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pscluster.coordinator.auto_local import LocalStepRules, LocalSteps
from pscluster.coordinator.auto_loss import LossJudge, LossRules
from pscluster.coordinator.auto_setting import ASYNC, SYNC, Consistency, Observation, Switch
from pscluster.coordinator.stragglers import outliers
from pscluster.errors import InvalidArgument
from pscluster.server.consistency import TrialStep

__all__ = [
    "ASYNC",
    "SYNC",
    "AutoConsistency",
    "AutoSettings",
    "Consistency",
    "Observation",
    "Switch",
]

# A threshold is crossed back only at this fraction of the way in (Schmitt trigger).
_OUT = 0.8
# The rungs of the ladder, tightest first.
STALENESS_FREE, BOUNDED, FREE = 0, 1, 2


@dataclass(frozen=True)
class AutoSettings:
    dwell_seconds: float = 2.0
    confirm: int = 3
    leave_sync: float = 1.6  # spread (slowest / fastest busy time) that leaves plain sync
    outlier: float = 2.0  # a worker this many times the median of the others: a straggler
    max_staleness: int = 8
    loss: LossRules = field(default_factory=LossRules)
    local: LocalStepRules = field(default_factory=LocalStepRules)
    hold_seconds: float = 20.0  # the first verdict's; each later one's is twice the last
    # Observations closer together than this only add their losses (the busy times are
    # EWMAs: a report a few milliseconds after the last one says nothing new).
    interval_seconds: float = 0.2

    def __post_init__(self) -> None:
        if self.dwell_seconds < 0 or self.confirm < 1 or self.hold_seconds <= 0:
            raise InvalidArgument(f"auto settings out of range: {self}")
        if not 1.0 < self.leave_sync <= self.outlier:
            raise InvalidArgument(
                f"auto settings need 1 < leave_sync <= outlier, got {self.leave_sync} and "
                f"{self.outlier}"
            )


class AutoConsistency:
    """One auto job's controller; its shards hold ``start`` (sync) at time ``now``. The first
    observation moves them to the free rung's async, or to sync with local steps where a
    window's communication outweighs the compute (see :meth:`_open`): the start is where the
    shards begin (a mode in which no member may idle), not a choice.

    ``resumed``: the job ran under an earlier coordinator, so its shards may hold any
    setting; the first observation then says which one they are to hold, whatever it is.
    Verdicts are not carried across a restart: the job starts at the free rung again.

    ``undoable``: the shards keep a copy of the job's state when a stale setting begins (a
    *trial*, :mod:`pscluster.server.trial`; not for jobs with embedding tables, nor past
    PSC_AUTO_TRIAL_MAX_MB). A verdict against the setting sends the job back to that copy, so
    the damage staleness did is not trained out of. The copy follows the loss: each block
    judged fine whose mean is below the loss where the copy was taken (at first the last
    ``block`` losses before the switch) takes it again (a job may gain under async for a
    while and then blow up: the digits job at lr 0.2 fell to 0.74 and rose to 2.7 in a CI
    run), so an undo loses only what came after the last good block, and never goes back to
    a block worse than the start (a block that fell from a loss async had already blown up is
    judged fine, but is no better). Leaving the stale setting without a verdict drops the
    copy."""

    def __init__(
        self,
        now: float,
        settings: AutoSettings | None = None,
        start: Consistency = SYNC,
        *,
        resumed: bool = False,
        undoable: bool = True,
        local_steps: int = 8,
    ) -> None:
        self.settings = settings or AutoSettings()
        self.current = start
        self.rung = FREE
        # When the current setting came in; the start is no choice, so it has no dwell.
        self.since = now - self.settings.dwell_seconds
        self._hold = self.settings.hold_seconds
        self._held_until = now  # the rung is not raised before this
        self._votes: deque[Consistency] = deque(maxlen=self.settings.confirm)
        self.judge = LossJudge(self.settings.loss)
        self._last = -math.inf  # when the last observation was judged
        self._opening = True
        self._resumed = resumed
        self.undoable = undoable
        self.trial_since: float | None = None  # when the copy was taken (None: none held)
        self._trial_at = ""  # where the copy was taken, for the undo's reason
        self._copy_loss = math.inf  # the mean step loss when it was taken
        # At most ``local_steps`` per push (1: none; a job with tables cannot take them).
        rules = replace(
            self.settings.local, max_steps=max(1, min(self.settings.local.max_steps, local_steps))
        )
        self.local = LocalSteps(rules, local_steps > 1, self.settings.hold_seconds)

    def observe(self, obs: Observation) -> Switch | None:
        """Fold one observation in; the switch it calls for, if any (already in force here:
        the caller carries it out)."""
        self.local.meter.add(obs.phases, obs.batches, obs.windows, self.current.local_steps)
        verdict = self.judge.feed(
            obs.losses, judged=self.current.stale, stalls=self.current.stale_mode
        )
        if verdict is not None:
            return self._tighten(obs, verdict)
        passed = self.judge.passed
        if (
            self.trial_since is not None
            and passed is not None
            and self.judge.clearly_below(passed, self._copy_loss)
        ):
            # Clean progress (no block since the switch rose or stalled) to below half the
            # loss where the copy was taken, noise and all: the copy moves up to here (taken
            # again).
            self.trial_since, self._copy_loss = obs.now, passed.mean
            self._trial_at = (
                f"where the mean loss was lowest under {self.current.describe()} "
                f"({passed.mean:.4g})"
            )
            return Switch(self.current, "", TrialStep.BEGIN)
        if obs.now - self._last < self.settings.interval_seconds:
            return None
        self._last = obs.now
        if self.rung < FREE and obs.now >= self._held_until:
            self.rung += 1
            self._held_until = obs.now + self._hold
        target, why = self.target(obs.busy)
        if self.rung < FREE and obs.missing:
            target, why = self.current, ""
        else:
            target, why = self._with_local_steps(target, why, obs.now)
        if self._opening:
            return self._open(target, why, obs.now)
        self._votes.append(target)
        agreed = len(self._votes) == self._votes.maxlen and len(set(self._votes)) == 1
        if not agreed or target == self.current:
            return None
        if obs.now - self.since < self.settings.dwell_seconds:
            return None
        return self._switch(target, obs.now, why)

    def target(self, busy: Mapping[str, float]) -> tuple[Consistency, str]:
        """The setting the rung and these busy times call for, given the one in force (its
        thresholds are the lower ways out), and why."""
        if self.rung == FREE:
            return ASYNC, (
                "no sign that staleness costs this job progress, so async, which never waits"
            )
        s = self.settings
        speeds = {w: t for w, t in busy.items() if t > 0}
        cur = self.current
        if len(speeds) < 2:
            return (cur if not cur.stale_mode else SYNC), "too few measured workers"
        slow = outliers(speeds, s.outlier * (_OUT if cur.backup_workers else 1.0))
        # A step must still wait for two workers at least, and for most of them.
        if slow and len(slow) <= (len(speeds) - 1) // 2 and len(speeds) - len(slow) >= 2:
            names = ", ".join(f"{w} at {r:.1f}x" for w, r in sorted(slow.items()))
            why = f"worker(s) much slower than the median of the others' busy time: {names}"
            return Consistency("sync", backup_workers=len(slow)), why
        spread = max(speeds.values()) / min(speeds.values())
        leave = s.leave_sync * (_OUT if cur.mode == "ssp" else 1.0)
        if spread < leave or self.rung == STALENESS_FREE:
            why = f"the workers' busy times per batch are within {spread:.2f}x of each other"
            if spread >= leave:
                why = f"staleness ruled out for now, though busy times spread {spread:.2f}x"
            return SYNC, why
        bound = min(s.max_staleness, max(1, math.ceil(spread)))
        if cur.mode == "ssp" and cur.staleness / 2 < bound < cur.staleness * 2:
            bound = cur.staleness  # close enough: a new bound is not worth a switch
        why = f"the workers' busy times per batch are spread {spread:.2f}x, without outliers"
        return Consistency("ssp", staleness=bound), why

    def _open(self, target: Consistency, why: str, now: float) -> Switch | None:
        """The first observation's switch. A job that starts with local steps starts on
        the staleness-free rung: with a barrier once per ``k`` batches sync waits ``k`` times
        less, while async's staleness would add to the drift of the local steps (digits at
        lr 0.2: sync with 8 local steps reached 95% in about a second in all 12 runs, async
        with 8 in none; bench/auto.py). The rung rises after a hold, as after a verdict."""
        self._opening = False
        if target.local_steps > 1:
            self.rung, self._held_until = STALENESS_FREE, now + self._hold
            k, because = self.local.choose(now, 1)
            target = replace(SYNC, local_steps=k)
            why = f"{because}; with a barrier once per {k} batches sync waits little"
        if self._resumed:
            why = why or "no measured workers yet"
            # The shards may hold an earlier controller's trial copy: it goes, or is
            # taken anew for a stale setting, whose undo must go back to this point.
            step = TrialStep.BEGIN if target.stale and self.undoable else TrialStep.END
            return self._switch(target, now, f"the coordinator restarted; {why}", step)
        return self._switch(target, now, why) if target != self.current else None

    def _with_local_steps(
        self, target: Consistency, why: str, now: float
    ) -> tuple[Consistency, str]:
        """``target`` with the local steps the measured communication calls for, and then
        without backup workers. A push refused as late throws away the ``k`` batches behind
        it, and the straggler still holds its lease to the end of the epoch: on the auto
        bench's straggler scenarios, runs with a backup worker beside 8 local steps needed
        more epochs than sync with 8 local steps and none, of no shorter seconds each
        (docs/architecture.md, "Local steps")."""
        k, because = self.local.choose(now, self.current.local_steps)
        if k == 1 and self.current.local_steps == 1:
            return target, why
        why = f"{why}; {because}" if because else why
        if k > 1 and target.backup_workers:
            why += "; no backup workers beside local steps (a late push wastes its window)"
            target = replace(target, backup_workers=0)
        return replace(target, local_steps=k), why

    def _tighten(self, obs: Observation, verdict: str) -> Switch:
        """The loss says the setting in force costs progress. A stale mode goes first: down
        to the staleness-free rung at once (no dwell: the two blocks behind the verdict are
        the evidence), for a hold twice as long as the last, local steps kept if they are
        called for (a verdict under sync with local steps then ends them). Local steps
        without a stale mode go, for a hold of their own."""
        self._opening = False
        unmeasured = False
        if self.current.stale_mode:
            held = self._hold
            self.rung, self._held_until, self._hold = STALENESS_FREE, obs.now + held, held * 2
            target, why = self.target(obs.busy)
            unmeasured = obs.missing > 0
            if unmeasured:
                target, why = _behind(obs)
            target, why = self._with_local_steps(target, why, obs.now)
            why = f"{verdict}; no staleness for {held:.0f} s ({why})"
        else:
            held = self.local.ban(obs.now)
            target, why = replace(self.current, local_steps=1), f"{verdict}; "
            why += f"one step per push for {held:.0f} s"
        trial = TrialStep.NONE
        if self.trial_since is not None:
            ago = obs.now - self.trial_since
            why += f"; the parameters go back to {self._trial_at}, {ago:.1f} s ago"
            trial = TrialStep.UNDO_KEEP if target.stale else TrialStep.UNDO
        switch = self._switch(target, obs.now, why, trial)
        if unmeasured:
            # No choice from busy times: the first one (once every member is measured) needs
            # its agreeing observations, not the dwell.
            self.since -= self.settings.dwell_seconds
        return switch

    def _switch(
        self, to: Consistency, now: float, why: str, trial: TrialStep = TrialStep.NONE
    ) -> Switch:
        """Put ``to`` in force; ``trial`` (UNDO, or END on a restart) or else the step the
        change calls for: a stale setting entered from a staleness-free one begins a trial,
        one left without a verdict ends it."""
        before = self.current
        if trial is TrialStep.NONE and to.stale != before.stale:
            if to.stale and self.undoable:
                trial = TrialStep.BEGIN
            elif not to.stale and self.trial_since is not None:
                trial = TrialStep.END
        if trial is TrialStep.BEGIN:
            self.trial_since, self._trial_at = now, f"where {to.describe()} began"
            self._copy_loss = self.judge.recent  # the losses reported under the last setting
        elif trial not in (TrialStep.NONE, TrialStep.UNDO_KEEP):  # (kept: the same point)
            self.trial_since = None
        self.current, self.since = to, now
        self._votes.clear()
        self.judge.restart()  # the loss is judged anew under each setting
        return Switch(to, f"{before.describe()} -> {to.describe()}: {why}", trial)


def _behind(obs: Observation) -> tuple[Consistency, str]:
    """The staleness-free setting at a verdict before every member is measured. A member
    that has not timed the batches the straggler tracker needs while others have, all of them
    free to run (the verdict ends a stale setting), is behind them: a straggler, or just
    joined. Each gets a backup worker, so the first steps of sync do not wait on it (a 5x
    straggler otherwise held every step for its ten batches); a step must still wait for two
    workers at least and for most of them. Once all are measured, the busy times decide."""
    missing, measured = obs.missing, obs.members - obs.missing
    if measured >= 2 and missing <= (obs.members - 1) // 2:
        names = ", ".join(obs.unmeasured) or f"{missing} worker(s)"
        why = f"{names} not measured yet while {measured} others are: behind them"
        return Consistency("sync", backup_workers=missing), why
    return SYNC, "not every member measured yet"
