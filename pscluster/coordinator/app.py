"""One coordinator: its state, its parts and its monitor thread, built from one Settings.

Nothing here is global: tests run several coordinators in one process, each on its own
state dir and port.
"""

from __future__ import annotations

from pscluster.config import Settings
from pscluster.coordinator.data_shapes import DataShapes
from pscluster.coordinator.finish import Finisher
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.monitor import Monitor
from pscluster.coordinator.queries import JobQueries
from pscluster.coordinator.restore import restore
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.scaling import ShardScaler
from pscluster.coordinator.sqlite_store import SqliteStore
from pscluster.coordinator.store import JobStore
from pscluster.coordinator.tasks import TaskDispatcher


class Coordinator:
    def __init__(self, settings: Settings, store: JobStore | None = None) -> None:
        """Open (or create) the state under ``settings.state_dir`` and resume running jobs;
        the monitor starts with :meth:`start`."""
        self.settings = settings
        self.rt = Runtime.build(settings, store or SqliteStore(settings.database()))
        self.jobs = JobManager(self.rt)
        self.finisher = Finisher(self.jobs)
        self.rt.start_executor(self.finisher.finishing, self.jobs.fail)
        self.queries = JobQueries(self.rt, self.jobs)
        self.tasks = TaskDispatcher(self.rt, self.jobs)
        self.data_shapes = DataShapes(self.jobs)
        self.monitor = Monitor(self.rt, self.jobs, self.finisher, self.tasks)
        self.scaler = ShardScaler(self.jobs)
        restore(self.jobs)
        self.scaler.recover_in_background()

    def start(self) -> None:
        self.monitor.start()

    def close(self) -> None:
        self.monitor.stop()
        self.rt.executor.close()
        self.rt.shards.close()
        self.rt.store.close()
