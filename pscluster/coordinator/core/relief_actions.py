"""The scheduling core's side of straggler relief: what a take-over and a progress report do.

:mod:`pscluster.coordinator.relief` decides (which lease to cut short, who is a straggler,
who no longer holds the others back); this module turns its answers into the lease book's
changes and the actions the executor carries out: the cut lease saved again, the events the
user reads, a membership sync when the excluded workers change. Pure, like the rest of the
core: the caller holds the coordinator lock around each call.
"""

from __future__ import annotations

from pscluster.coordinator.core.actions import Action, SyncMembers, event, lease_saved
from pscluster.coordinator.lease_values import Lease
from pscluster.coordinator.leases import LeaseBook
from pscluster.coordinator.relief import StragglerRelief
from pscluster.v1 import coordinator_pb2 as co_pb2


def take_over(
    book: LeaseBook, relief: StragglerRelief, worker_id: str, now: float
) -> tuple[Lease | None, list[Action]]:
    """For a worker that found nothing free: cut a straggler's lease (or one past its
    deadline) short and lease the rest to this worker."""
    for job_id in book.job_ids():
        split = relief.pick_split(job_id, book.train_leases(job_id), worker_id, now)
        if split is None:
            continue
        rest = book.split(split.lease.lease_id, split.new_end)
        if rest is None:
            continue
        lease = book.acquire(worker_id)
        if lease is None:  # cannot happen: the rest was just put first in the pool
            return None, []
        shortened = book.lease(split.lease.lease_id)
        message = (
            f"{split.why}: batches [{rest.first}, {rest.end}) of partition "
            f"{rest.partition} (epoch {lease.epoch}) go to worker {worker_id}"
        )
        actions: list[Action] = [event(job_id, now, "split", split.lease.worker_id, message)]
        if shortened is not None:
            actions.append(lease_saved(shortened))
        return lease, actions
    return None, []


def lease_progress(
    book: LeaseBook,
    relief: StragglerRelief,
    worker_id: str,
    job_id: str,
    progress: co_pb2.LeaseProgress,
    now: float,
    wall: float,
) -> tuple[int, list[Action]]:
    """Fold a lease's progress report into the relief: (the lease's end batch now, 0 if it
    is not this worker's lease; the straggler events and membership sync it caused)."""
    lease = book.lease(progress.lease_id)
    if lease is not None and (lease.worker_id != worker_id or lease.job_id != job_id):
        lease = None  # not this worker's: its timings still count, its position does not
    actions: list[Action] = [
        event(job_id, wall, c.kind, c.worker_id, c.message)
        for c in relief.on_progress(job_id, worker_id, lease, progress, now)
    ]
    actions += _exclusion_changes(relief, job_id, now, wall)
    return (lease.end_batch if lease else 0), actions


def _exclusion_changes(
    relief: StragglerRelief, job_id: str, now: float, wall: float
) -> list[Action]:
    """Events for the workers newly left out of (or let back into) the slowest clock, and
    the membership sync that tells the shards; nothing if the exclusion did not change."""
    change = relief.exclusion_changed(job_id, now)
    if change is None:
        return []
    added, removed = change
    actions: list[Action] = [
        event(job_id, wall, "excluded", w, f"worker {w} no longer holds back the ssp clock")
        for w in added
    ]
    actions += [
        event(job_id, wall, "included", w, f"worker {w} counts in the ssp clock again")
        for w in removed
    ]
    actions.append(SyncMembers(job_id))
    return actions
