"""One thread that applies the core's store writes, many decisions to a commit.

Hundreds of workers finishing leases would otherwise each pay a transaction under the lock
they all need. Here a call queues its writes and gets a ticket; the writer applies everything
queued in one transaction, and every caller whose writes were in it is released together
(group commit, as the shards' write-ahead log does). A worker's CompleteTask is answered only
once what it reported is durable, so a coordinator killed right after loses no finished lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pscluster.coordinator.store import JobStore
from pscluster.coordinator.writes import Write, compact
from pscluster.errors import DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)


class StoreWriter:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._queue: list[Write] = []
        self._queued = 0  # tickets handed out (one per non-empty submit)
        self._done = 0  # tickets whose writes are committed (or failed)
        self._failed: dict[int, BaseException] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, writes: Sequence[Write]) -> int:
        """Queue ``writes`` (applied in order, after everything queued before); a ticket for
        :meth:`wait`, 0 when there was nothing to write."""
        if not writes:
            return 0
        with self._cond:
            if self._closed:
                raise Unavailable("the coordinator is stopping; its store is closed")
            self._queue.extend(writes)
            self._queued += 1
            self._cond.notify_all()
            return self._queued

    def wait(self, ticket: int, timeout: float = 30.0) -> None:
        """Return once the ticket's writes are committed; raise what made them fail."""
        if ticket == 0:
            return
        with self._cond:
            if not self._cond.wait_for(lambda: self._done >= ticket, timeout):
                raise DeadlineExceeded(f"the coordinator's store did not commit in {timeout:g} s")
            error = self._failed.get(ticket)
        if error is not None:
            raise Unavailable(f"the coordinator could not store its state: {error}") from error

    def write(self, writes: Sequence[Write], timeout: float = 30.0) -> None:
        """Queue and wait: the writes are durable when this returns."""
        self.wait(self.submit(writes), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
                last = self._queued
            error: BaseException | None = None
            try:
                self._store.apply(compact(batch))
            except Exception as e:  # a disk or database error: every waiter hears it
                log.exception("the store could not apply %d writes", len(batch))
                error = e
            with self._cond:
                if error is not None:
                    for ticket in range(self._done + 1, last + 1):
                        self._failed[ticket] = error
                self._done = last
                # Failures are kept only until their waiters could have read them.
                for ticket in [t for t in self._failed if t < last - 10_000]:
                    del self._failed[ticket]
                self._cond.notify_all()
