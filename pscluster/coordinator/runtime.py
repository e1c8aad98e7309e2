"""The coordinator's shared state, built once per coordinator and passed to its parts.

``lock`` guards the lease book, the worker registry and ``activity``; it is never held while
a shard is called (membership changes take their own per-job lock, see membership.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pscluster.config import Settings
from pscluster.coordinator.blobs import BlobStore
from pscluster.coordinator.leases import LeaseBook
from pscluster.coordinator.membership import Membership, Roster
from pscluster.coordinator.relief import StragglerRelief
from pscluster.coordinator.store import JobStore, LeaseRecord
from pscluster.coordinator.workers import WorkerRegistry
from pscluster.shard_client import ShardClient, ShardError

log = logging.getLogger(__name__)


@dataclass
class Activity:
    """When a running job last moved, for the stall diagnosis (monotonic seconds)."""

    last_progress: float
    last_lease: float


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    shards: ShardClient
    book: LeaseBook
    workers: WorkerRegistry
    membership: Membership
    relief: StragglerRelief
    lock: threading.RLock = field(default_factory=threading.RLock)
    activity: dict[str, Activity] = field(default_factory=dict)
    # Jobs whose shards may hold a stale membership (a sync failed, or a restart): the monitor
    # sends the current one again until it lands.
    unsynced: set[str] = field(default_factory=set)
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    saved_revision: int = -1  # the lease book's revision last written to the store
    # Notified whenever the lease book changes: workers waiting in AcquireTask look again.
    tasks_changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.tasks_changed = threading.Condition(self.lock)

        def wake() -> None:
            with self.lock:  # re-entrant: the book is changed under it already
                self.tasks_changed.notify_all()

        self.book.on_change = wake

    @classmethod
    def build(cls, settings: Settings, store: JobStore) -> Runtime:
        shards = ShardClient(settings)

        def persist(job_id: str, generation: int) -> None:
            store.update_job(job_id, generation=generation)

        return cls(
            settings=settings,
            store=store,
            blobs=BlobStore(settings.state_dir / "jobs"),
            shards=shards,
            book=LeaseBook(),
            workers=WorkerRegistry(settings.worker_timeout_seconds),
            membership=Membership(shards, persist),
            relief=StragglerRelief(settings.progress_seconds),
        )

    def sync_members(self, job_id: str) -> ShardError | None:
        """Push the job's current members to its shards; the error if a shard refused."""

        def snapshot() -> Roster | None:
            with self.lock:
                if not self.book.has_job(job_id):
                    return None
                members = self.book.members(job_id)
                excluded = self.relief.excluded(job_id, self.mono())
                return Roster(members, [w for w in excluded if w in members])

        try:
            self.membership.sync(job_id, snapshot)
        except ShardError as e:
            log.warning("job %s: membership not updated: %s", job_id, e)
            with self.lock:
                self.unsynced.add(job_id)
            return e
        with self.lock:
            self.unsynced.discard(job_id)
        return None

    def resync_members(self) -> None:
        """Retry the memberships that did not land (jobs that ended meanwhile are skipped)."""
        with self.lock:
            pending = sorted(j for j in self.unsynced if self.book.has_job(j))
            self.unsynced.intersection_update(pending)
        for job_id in pending:
            self.sync_members(job_id)

    def save_leases(self) -> None:
        """Call under ``lock`` after changing leases: write them if they changed, so that a
        restarted coordinator honours the leases its workers are still training on."""
        if self.book.revision == self.saved_revision:
            return
        self.store.save_leases(
            [LeaseRecord(**dataclasses.asdict(lease)) for lease in self.book.outstanding()]
        )
        self.saved_revision = self.book.revision

    def touch_progress(self, job_id: str) -> None:
        """Call under ``lock``: the job made progress (a step or a finished lease)."""
        act = self.activity.get(job_id)
        if act is not None:
            act.last_progress = self.mono()
