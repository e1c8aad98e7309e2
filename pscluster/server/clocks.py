"""A job's members and their clocks (pushes accepted from each), and the shard clock.

The shard clock is the slowest member's clock. It never goes down: a joining worker starts at
the current shard clock (so a worker that (re)joins is not "behind" and stalls nobody), a
leaving worker can only raise the minimum, and a push only raises its sender's clock. When the
member set is empty the shard clock keeps its last value, so a set emptied and refilled (a
coordinator restart) does not send the clock back to 0 under workers that have seen it.
"""

from __future__ import annotations

from collections.abc import Iterable


class MemberClocks:
    def __init__(self) -> None:
        self._clocks: dict[str, int] = {}
        self._floor = 0

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._clocks

    @property
    def members(self) -> list[str]:
        return sorted(self._clocks)

    @property
    def clock(self) -> int:
        return min(self._clocks.values()) if self._clocks else self._floor

    def of(self, worker_id: str) -> int:
        return self._clocks[worker_id]

    def slowest(self) -> tuple[str, int] | None:
        """The member with the lowest clock (ties: the first name in order), or None."""
        if not self._clocks:
            return None
        worker = min(sorted(self._clocks), key=self._clocks.__getitem__)
        return worker, self._clocks[worker]

    def set_members(self, worker_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Replace the member set; returns the (added, removed) workers, each sorted."""
        wanted = set(worker_ids)
        removed = sorted(set(self._clocks) - wanted)
        added = sorted(wanted - set(self._clocks))
        for worker in removed:
            del self._clocks[worker]
        start = self.clock  # the remaining members' minimum, or the last shard clock
        for worker in added:
            self._clocks[worker] = start
        self._floor = self.clock
        return added, removed

    def tick(self, worker_id: str) -> None:
        self._clocks[worker_id] += 1
        self._floor = self.clock

    def snapshot(self) -> dict[str, int]:
        return dict(self._clocks)
