"""A job's consistency replaced while it runs (the coordinator's mode "auto").

A switch happens under the job's lock, between two pushes, so no push is decided half under
one mode and half under the other. What the old policy holds is never dropped and never
applied twice: a sync step in progress is handed to the new policy when that one also works
in steps (sync with or without backup workers: the same pushes, now closed by the new rule),
and otherwise applied as the step it is (its pushes were answered as taken, and their workers'
pulls wait for that step's end). The members' clocks and the version live in the job, not in
the policy, so they simply go on; a worker whose next push is too old for the new mode is
told so (stale), pulls, and pushes again, as it would under that mode anyway.
"""

from __future__ import annotations

from pscluster.server.consistency.base import ConsistencyPolicy, JobContext
from pscluster.server.consistency.registry import make_policy


def switch_policy(
    job: JobContext, old: ConsistencyPolicy, mode: str, staleness: int, backup_workers: int
) -> ConsistencyPolicy:
    """The job's new policy, with the old one's held pushes carried over or applied; call
    under the job's lock and put the result in place before the lock is let go.
    InvalidArgument (nothing changed) if the three do not fit together."""
    new = make_policy(mode, staleness, backup_workers)
    if old.traits.steps and new.traits.steps:
        tensors, meta = old.state_dict()
        new.load_state_dict(tensors, meta)
    else:
        old.flush(job)
    # Fewer pushes may close a step under the new rule (backup workers): close it now.
    new.on_members_changed(job)
    return new
