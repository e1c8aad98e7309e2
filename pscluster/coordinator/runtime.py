"""The coordinator's shared state, built once per coordinator and passed to its parts.

``lock`` guards the scheduling core (:mod:`pscluster.coordinator.core`): every event goes to
the core under it, and nothing slow ever runs under it; what the core decides is carried out
by the executor (:mod:`pscluster.coordinator.executor`) after the lock is released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pscluster.config import Settings
from pscluster.coordinator.blobs import BlobStore
from pscluster.coordinator.consistency_switch import ConsistencySender
from pscluster.coordinator.core.job_plan import Activity
from pscluster.coordinator.core.scheduler import Scheduler
from pscluster.coordinator.executor import Executor
from pscluster.coordinator.leases import LeaseBook
from pscluster.coordinator.members import Roster
from pscluster.coordinator.relief import StragglerRelief
from pscluster.coordinator.shard_directory import ShardDirectory
from pscluster.coordinator.store import JobStore
from pscluster.coordinator.timeline import Timelines
from pscluster.coordinator.workers import WorkerRegistry
from pscluster.shard_client import ShardClient


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    shards: ShardClient
    core: Scheduler
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Where each running job's step time goes (its own lock: reports need not take ``lock``).
    timelines: Timelines = field(default_factory=Timelines)
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    # Set by the coordinator once the job manager exists (it finishes and fails jobs).
    executor: Executor = field(init=False)
    # Notified when work becomes available: workers waiting in AcquireTask look again.
    tasks_changed: threading.Condition = field(init=False)
    # Where new jobs go: the static shard list, or the shards that registered (own lock).
    directory: ShardDirectory = field(init=False)
    consistency: ConsistencySender = field(init=False)

    def __post_init__(self) -> None:
        self.tasks_changed = threading.Condition(self.lock)
        # Mode "auto"'s switches, sent to each job's shards (and again after a move).
        self.consistency = ConsistencySender(self.shards, self.store)
        self.directory = ShardDirectory(
            self.settings, self.store, lambda: self.mono(), lambda: self.wall()
        )

        def wake() -> None:
            with self.lock:  # re-entrant: the book is changed under it already
                self.tasks_changed.notify_all()

        self.core.book.on_available = wake

    @classmethod
    def build(cls, settings: Settings, store: JobStore) -> Runtime:
        return cls(
            settings=settings,
            store=store,
            blobs=BlobStore(settings.state_dir / "jobs"),
            shards=ShardClient(settings),
            core=Scheduler(settings.worker_timeout_seconds, settings.progress_seconds),
        )

    def start_executor(
        self, finish: Callable[[str], object], fail: Callable[[str, str], object]
    ) -> None:
        self.executor = Executor(
            self.store,
            self.shards.set_members,
            self.roster,
            finish,
            fail,
            switch=self.consistency.send,
        )

    def roster(self, job_id: str) -> Roster | None:
        """The membership the job's shards should hold now (None: the job is gone)."""
        with self.lock:
            return self.core.roster(job_id, self.mono())

    # The core's parts, for readers (queries, the monitor, telemetry): under ``lock``.
    @property
    def book(self) -> LeaseBook:
        return self.core.book

    @property
    def workers(self) -> WorkerRegistry:
        return self.core.workers

    @property
    def relief(self) -> StragglerRelief:
        return self.core.relief

    @property
    def activity(self) -> dict[str, Activity]:
        return self.core.activity
