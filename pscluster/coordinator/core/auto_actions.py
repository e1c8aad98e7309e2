"""The scheduling core's side of mode "auto": an observation per progress report, and what a
switch becomes (the relief's new rules, the job's event, the shards' new mode).

:mod:`pscluster.coordinator.auto` decides; this module feeds it what the coordinator has
measured (the straggler tracker's busy time per batch of each active worker, the losses just
reported, the report's seconds per phase) and turns its answer into actions. Pure, under the
caller's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from pscluster.coordinator.auto import AutoConsistency, Observation
from pscluster.coordinator.core.actions import Action, SwitchConsistency, event
from pscluster.coordinator.relief import StragglerRelief
from pscluster.coordinator.stragglers import MIN_BATCHES
from pscluster.v1 import coordinator_pb2 as co_pb2


def observe(
    auto: AutoConsistency,
    relief: StragglerRelief,
    job_id: str,
    losses: Sequence[float],
    members: Sequence[str],
    progress: co_pb2.LeaseProgress | None,
    now: float,
    wall: float,
) -> list[Action]:
    """Fold a report into the job's controller (``members``: the workers taking part now); a
    switch's event and shard update, if any.

    The revision is the wall time in microseconds: it grows across a coordinator restart too
    (the shards keep the revision in force and ignore anything not newer)."""
    busy = {
        s.worker_id: s.busy_seconds
        for s in relief.speeds(job_id, now)
        if s.active and s.batches >= MIN_BATCHES
    }
    # Named only while some are (every report of every worker comes through here).
    unmeasured = () if len(busy) >= len(members) else tuple(w for w in members if w not in busy)
    phases, batches, windows = (
        (dict(progress.phase_seconds), progress.batches, progress.windows)
        if progress
        else ({}, 0, 0)
    )
    observation = Observation(now, busy, losses, len(members), unmeasured, phases, batches, windows)
    switch = auto.observe(observation)
    if switch is None:
        return []
    to = switch.to
    shards = SwitchConsistency(
        job_id,
        to.mode,
        to.staleness,
        to.backup_workers,
        int(wall * 1e6),
        switch.trial,
        to.local_steps,
    )
    if not switch.reason:  # only a step of the trial (a new copy, or its end): the setting stays
        return [shards]
    relief.set_consistency(job_id, to.mode, to.backup_workers)
    return [event(job_id, wall, "consistency", "", switch.reason), shards]
