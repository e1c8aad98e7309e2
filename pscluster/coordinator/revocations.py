"""Why leases were taken back, so that their holders hear it.

A revoked lease's holder may still be training on it: it hears of the revocation once, in its
next heartbeat, and a late CompleteTask hears why the lease is gone. Pure bookkeeping for the
lease book (:mod:`pscluster.coordinator.leases`), under the caller's lock.
"""

from __future__ import annotations

from collections import OrderedDict

# The reasons are kept for a late CompleteTask; a bound keeps a long-running coordinator's
# memory flat.
_MAX_REVOKED = 10_000


class Revocations:
    def __init__(self, limit: int = _MAX_REVOKED) -> None:
        self._limit = limit
        self._reasons: OrderedDict[str, str] = OrderedDict()  # lease id -> reason
        self._untold: dict[str, list[str]] = {}  # worker id -> lease ids it has not heard of

    def add(self, lease_id: str, worker_id: str, reason: str) -> None:
        self._reasons[lease_id] = reason
        while len(self._reasons) > self._limit:
            self._reasons.popitem(last=False)
        self._untold.setdefault(worker_id, []).append(lease_id)

    def reason(self, lease_id: str, default: str) -> str:
        """Why the lease was revoked; ``default`` if it was not (or so long ago that it is
        forgotten)."""
        return self._reasons.get(lease_id, default)

    def take(self, worker_id: str) -> list[str]:
        """Leases of this worker revoked since the last call (told once, in a heartbeat)."""
        return self._untold.pop(worker_id, [])

    def forget_worker(self, worker_id: str) -> None:
        """Drop what is kept for a worker that will never come back."""
        self._untold.pop(worker_id, None)
