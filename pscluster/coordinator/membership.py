"""Telling a job's shards which workers train on it, in order.

Sync barriers wait for every member and ssp clocks measure the slowest one, so a worker must
be a member on every shard before its first pull, and a departed worker must stop being one.
Each change takes the job's lock, snapshots the membership, numbers it with the next
generation and sends it to every shard; shards ignore a generation older than the one they
hold, so even a late message cannot undo a newer membership. The message also names the
members an ssp job's slowest clock should not wait for (stragglers, see relief.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pscluster.shard_client import ShardClient


@dataclass(frozen=True)
class Roster:
    """A job's members, and those of them excluded from the ssp slowest clock."""

    members: list[str]
    excluded: list[str] = field(default_factory=list)


@dataclass
class _Job:
    addresses: list[str]
    generation: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class Membership:
    def __init__(self, shards: ShardClient, persist: Callable[[str, int], None]) -> None:
        """``persist(job_id, generation)`` saves the generation, so that a restarted
        coordinator keeps numbering above what the shards have seen."""
        self._shards = shards
        self._persist = persist
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}

    def add_job(self, job_id: str, addresses: Sequence[str], generation: int) -> None:
        with self._lock:
            self._jobs[job_id] = _Job(list(addresses), generation)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def sync(self, job_id: str, snapshot: Callable[[], Roster | None]) -> Roster | None:
        """Send the membership ``snapshot()`` returns (None: the job is gone, send nothing).

        Returns the members sent. Raises ShardError if a shard did not take it; the caller
        decides whether that blocks what it was doing.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        with job.lock:
            roster = snapshot()
            if roster is None:
                return None
            job.generation += 1
            self._persist(job_id, job.generation)
            self._shards.set_members(
                job.addresses, job_id, roster.members, job.generation, roster.excluded
            )
            return roster
