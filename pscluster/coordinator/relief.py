"""What the coordinator does about stragglers, per job: size, split and exclude.

Detection is :mod:`pscluster.coordinator.stragglers`; this module turns its flags into the
three mitigations a job gets unless its spec says ``no_mitigation``:

- *smaller leases, or none*: a flagged straggler is given a share of a unit sized to its
  speed (1/slowdown), and the rest of the unit stays free for faster workers. Where every
  step waits for every member (plain sync, no backup workers) a straggler is given nothing
  while others can train, except one small probe lease every ``PROBE_SECONDS`` so that its
  speed is measured again and a recovered worker is let back in;
- *splitting*: when a worker that is not a straggler finds nothing free in the epoch, the
  lease of a straggler, or a lease that has run past its deadline, is cut short at the
  batch its holder is about to reach, and the rest goes to the idle worker, so an epoch is
  not held hostage by one slow worker;
- *exclusion*: where the mode lets a straggler out of the slowest clock (ssp), a worker
  flagged for the grace period stops counting in it, so it stops blocking the others (the
  shards let it back in once it has caught up; see :mod:`pscluster.server.clocks`).

Which of these a job's mode allows is asked of its consistency traits
(:func:`pscluster.server.consistency.mode_traits`), never of the mode's name. Backup workers
in sync mode are the shards' business (the job spec's ``backup_workers``).
Pure bookkeeping: the caller holds the coordinator lock and passes monotonic times in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pscluster.coordinator.lease_values import Lease
from pscluster.coordinator.stragglers import Change, SpeedTracker, StragglerSettings
from pscluster.server.consistency import Traits, mode_traits
from pscluster.v1 import coordinator_pb2 as co_pb2

# A lease with no straggler on it is split only once it has run this many times longer than
# its batches take the job's typical worker, plus a margin for start-up.
_DEADLINE_SLACK_SECONDS = 2.0
# A mode whose steps wait for every member: how often a straggler kept off the job gets a small
# lease to be measured again.
PROBE_SECONDS = 5.0


@dataclass
class _Job:
    traits: Traits  # what the job's mode (with its backup workers) means for relief
    settings: StragglerSettings
    tracker: SpeedTracker
    excluded: list[str]
    last_lease: dict[str, float] = field(default_factory=dict)  # worker -> when granted


@dataclass
class _Held:
    """A running lease as relief sees it."""

    job_id: str
    started: float  # monotonic time it was granted
    position: int  # batches done (absolute index in the partition's plan)


@dataclass(frozen=True)
class Split:
    lease: Lease
    new_end: int
    why: str


class StragglerRelief:
    def __init__(self, progress_seconds: float) -> None:
        # A worker hears that its lease was cut short with its next progress report, so it
        # may do this long of extra batches first.
        self.progress_seconds = progress_seconds
        self._jobs: dict[str, _Job] = {}
        self._held: dict[str, _Held] = {}  # by lease id

    # --- jobs ---
    def add_job(
        self, job_id: str, mode: str, settings: StragglerSettings, backup_workers: int = 0
    ) -> None:
        """Track a job; ``mode`` and ``backup_workers`` are its spec's (already validated:
        InvalidArgument otherwise)."""
        active = max(10.0, 10 * self.progress_seconds)
        tracker = SpeedTracker(settings, active)
        self._jobs[job_id] = _Job(mode_traits(mode, backup_workers), settings, tracker, [])

    def set_consistency(self, job_id: str, mode: str, backup_workers: int) -> None:
        """The job's mode changed while it runs (mode "auto"): relieve as the new one allows
        (a mode whose clock cannot leave a straggler out lets the excluded back in)."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.traits = mode_traits(mode, backup_workers)

    def remove_job(self, job_id: str, now: float) -> list[co_pb2.WorkerSpeed]:
        """Stop tracking a job; its workers' speeds as they ended (for its final metrics)."""
        speeds = self.speeds(job_id, now)
        self._jobs.pop(job_id, None)
        # Its leases were revoked with it: nobody will report or complete them.
        for lease_id in [i for i, h in self._held.items() if h.job_id == job_id]:
            self.ended(lease_id)
        return speeds

    # --- leases ---
    def granted(self, lease: Lease, now: float) -> None:
        self._held[lease.lease_id] = _Held(lease.job_id, now, lease.first_batch)
        job = self._jobs.get(lease.job_id)
        if job is not None:
            job.last_lease[lease.worker_id] = now

    def ended(self, lease_id: str) -> None:
        self._held.pop(lease_id, None)

    def position(self, lease_id: str) -> int:
        held = self._held.get(lease_id)
        return 0 if held is None else held.position

    # --- progress ---
    def on_progress(
        self,
        job_id: str,
        worker_id: str,
        lease: Lease | None,
        progress: co_pb2.LeaseProgress,
        now: float,
    ) -> list[Change]:
        """Fold a progress report in; the straggler flags it raised or cleared."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        held = None if lease is None else self._held.get(lease.lease_id)
        if held is not None:
            held.position = max(held.position, progress.position)
        job.tracker.record(
            worker_id, progress.batches, progress.busy_seconds, progress.step_seconds, now
        )
        return job.tracker.assess(now)

    def share(self, job_id: str, worker_id: str, now: float) -> float:
        """The fraction of a unit to lease to this worker: 1 unless it is a straggler; 0 for
        none at all (steps wait for every member, and it is between probes)."""
        job = self._jobs.get(job_id)
        if job is None or not job.settings.mitigate:
            return 1.0
        share = job.tracker.share(worker_id)
        others = job.tracker.median_step_seconds(now) is not None  # unflagged workers train
        if share < 1.0 and job.traits.step_waits_for_all and others:
            last = job.last_lease.get(worker_id)
            if last is not None and now - last < PROBE_SECONDS:
                return 0.0
        return share

    def pick_split(self, job_id: str, leases: list[Lease], taker: str, now: float) -> Split | None:
        """The running lease of the job to cut short for the idle worker ``taker``, if any."""
        job = self._jobs.get(job_id)
        if job is None or not job.settings.mitigate or job.tracker.is_straggler(taker):
            return None
        typical = job.tracker.median_step_seconds(now)
        best: tuple[float, Split] | None = None
        for lease in leases:
            # A lease of two batches or fewer has nothing to hand on once its holder has
            # heard of the cut (the margin below is at least two batches): skipped before
            # any lookup, since idle workers ask here for every lease at an epoch's end.
            if lease.worker_id == taker or lease.end_batch - lease.first_batch <= 2:
                continue
            position = self.position(lease.lease_id)
            left = lease.end_batch - position
            own = job.tracker.step_seconds(lease.worker_id) or typical or 0.0
            # Batches the holder does before it hears of the cut (one report interval).
            margin = 1 + (math.ceil(self.progress_seconds / own) if own > 0 else 1)
            if left <= margin:
                continue
            if job.tracker.is_straggler(lease.worker_id):
                why = f"worker {lease.worker_id} is a straggler"
            elif typical is not None:
                held = self._held.get(lease.lease_id)
                took = 0.0 if held is None else now - held.started
                size = lease.end_batch - lease.first_batch
                deadline = job.settings.factor * size * typical + _DEADLINE_SLACK_SECONDS
                if took <= deadline:
                    continue
                why = f"lease {lease.lease_id} ran {took:.1f}s, past its {deadline:.1f}s deadline"
            else:
                continue
            # The lease with the most time left goes first: that is what holds the epoch.
            remaining = left * own
            if best is None or remaining > best[0]:
                best = (remaining, Split(lease, position + margin, why))
        return None if best is None else best[1]

    # --- exclusion from the slowest clock ---
    def excluded(self, job_id: str, now: float) -> list[str]:
        """The stragglers the shards' slowest clock should not wait for (a mode whose
        clock can leave a straggler out: ssp)."""
        job = self._jobs.get(job_id)
        if job is None or not job.traits.excludable or not job.settings.mitigate:
            return []
        return job.tracker.excluded(now)

    def exclusion_changed(self, job_id: str, now: float) -> tuple[list[str], list[str]] | None:
        """(newly excluded, no longer excluded) since the last call, or None if unchanged."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        current = self.excluded(job_id, now)
        if current == job.excluded:
            return None
        added = sorted(set(current) - set(job.excluded))
        removed = sorted(set(job.excluded) - set(current))
        job.excluded = current
        return added, removed

    # --- reading ---
    def stragglers(self, job_id: str) -> list[str]:
        job = self._jobs.get(job_id)
        return [] if job is None else job.tracker.stragglers()

    def standing(self, job_id: str, worker_id: str) -> tuple[bool, float]:
        """(flagged as a straggler, slowdown) of a worker on a job; (False, 0.0) if unknown."""
        job = self._jobs.get(job_id)
        if job is None:
            return False, 0.0
        return job.tracker.is_straggler(worker_id), job.tracker.slowdown(worker_id)

    def speeds(self, job_id: str, now: float) -> list[co_pb2.WorkerSpeed]:
        job = self._jobs.get(job_id)
        if job is None:
            return []
        excluded = set(self.excluded(job_id, now))
        return [
            co_pb2.WorkerSpeed(
                worker_id=w,
                busy_seconds=s.busy,
                step_seconds=s.step,
                batches=s.batches,
                slowdown=s.slowdown,
                straggler=s.flagged_since is not None,
                excluded=w in excluded,
                active=active,
            )
            for w, (s, active) in sorted(job.tracker.snapshot(now).items())
        ]

    def job_ids(self) -> list[str]:
        return list(self._jobs)
