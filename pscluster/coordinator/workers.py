"""Worker registry and liveness: who is registered, when each was last heard from.

Workers are stateless and cheap to replace, so the registry lives in memory only: after a
coordinator restart every worker hears "unknown worker, register again" and does so, except
those holding a lease the restarted coordinator restored: they are expected back (see
:meth:`WorkerRegistry.expect`) and go on training on it. Times
are ``time.monotonic()`` values passed in by the caller, so tests can drive the clock.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from pscluster.errors import InvalidArgument, NotFound

_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A dead worker stays listed (alive=False) in ClusterStatus for this many timeouts, so that an
# operator sees what died; then it is forgotten.
_KEEP_DEAD_TIMEOUTS = 10


@dataclass
class WorkerInfo:
    worker_id: str
    host: str
    pid: int
    device: str
    registered: float
    last_seen: float
    alive: bool = True
    expected_until: float = 0.0  # restored after a restart: not declared dead before this


class WorkerRegistry:
    def __init__(self, timeout_seconds: float) -> None:
        if timeout_seconds <= 0:
            raise InvalidArgument(f"worker timeout must be > 0 s, got {timeout_seconds}")
        self.timeout_seconds = timeout_seconds
        self._workers: dict[str, WorkerInfo] = {}

    def register(
        self, host: str, pid: int, device: str, now: float, worker_id: str = ""
    ) -> tuple[WorkerInfo, bool]:
        """Register a worker (under ``worker_id`` if given); True if the id was already alive,
        i.e. a restarted process took over an id whose leases it no longer holds.
        """
        if worker_id and not _WORKER_ID.match(worker_id):
            raise InvalidArgument(
                f"worker_id {worker_id!r} is invalid: expected 1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit (or empty to get a new id)"
            )
        wid = worker_id or f"w-{uuid.uuid4().hex[:8]}"
        previous = self._workers.get(wid)
        info = WorkerInfo(wid, host[:256], pid, device[:64], now, now)
        self._workers[wid] = info
        return info, previous is not None and previous.alive

    def expect(self, worker_id: str, now: float, grace: float) -> None:
        """Count a worker that held a lease before a coordinator restart as alive: it has
        ``grace`` seconds more than the usual timeout to be heard from (its channel may be in
        reconnect backoff after the outage), or it is declared dead and its lease released."""
        if worker_id in self._workers:
            return
        self._workers[worker_id] = WorkerInfo(
            worker_id, "", 0, "", now, now, True, now + self.timeout_seconds + grace
        )

    def touch(self, worker_id: str, now: float) -> bool:
        """Renew liveness; False if the worker is unknown or already declared dead."""
        info = self._workers.get(worker_id)
        if info is None or not info.alive:
            return False
        info.last_seen = now
        return True

    def require(self, worker_id: str, now: float) -> WorkerInfo:
        """The live worker, renewed; NOT_FOUND tells a forgotten or dead worker to register."""
        info = self._workers.get(worker_id)
        if info is None or not info.alive:
            raise NotFound(f"unknown worker {worker_id!r}, register again")
        info.last_seen = now
        return info

    def expire(self, now: float) -> tuple[list[str], list[str]]:
        """Declare silent workers dead; returns (newly dead, forgotten for good)."""
        dead, forgotten = [], []
        for info in list(self._workers.values()):
            silent = now - info.last_seen
            if info.alive and silent > self.timeout_seconds and now > info.expected_until:
                info.alive = False
                dead.append(info.worker_id)
            elif not info.alive and silent > self.timeout_seconds * _KEEP_DEAD_TIMEOUTS:
                del self._workers[info.worker_id]
                forgotten.append(info.worker_id)
        return dead, forgotten

    def alive_count(self) -> int:
        return sum(1 for w in self._workers.values() if w.alive)

    def snapshot(self) -> list[WorkerInfo]:
        return [WorkerInfo(**vars(w)) for w in self._workers.values()]
