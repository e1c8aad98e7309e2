"""A pull in a thread of its own, and the moment it waits: what the tests of blocking reads (a
sync barrier, an ssp bound, a dropped job) act on, instead of sleeping and hoping it waits."""

from __future__ import annotations

import threading

from pscluster.server.shard_job import ShardJob
from pscluster.v1 import common_pb2
from tests.support import wait_for


class BackgroundPull:
    """``job.pull(worker, min_version)`` started in a thread; its version and clock, or the
    exception it ended with."""

    def __init__(
        self, job: ShardJob, worker: str, min_version: int = 0, timeout: float = 10.0
    ) -> None:
        self.worker = worker
        self.version: int | None = None
        self.clock: int | None = None
        self.error: Exception | None = None
        self._held = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(job, min_version, timeout))
        self._thread.start()

    def _run(self, job: ShardJob, min_version: int, timeout: float) -> None:
        try:
            with job.pull(
                self.worker, min_version, common_pb2.DTYPE_FLOAT32, timeout, self._waiting
            ) as snap:
                self.version, self.clock = snap.version, snap.clock
        except Exception as e:
            self.error = e

    def _waiting(self) -> bool:
        # The job asks whether the caller went away only once the pull is held, right before
        # it waits (under the job's lock): the first question says the pull waits.
        self._held.set()
        return False

    def wait_held(self, timeout: float = 5.0) -> None:
        """Return once the pull waits; the test fails if it ends or never waits."""
        wait_for(self._held.is_set, timeout, what=f"the pull by {self.worker} to wait")
        assert self._thread.is_alive(), (self.version, self.error)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the pull by {self.worker} still waits"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
