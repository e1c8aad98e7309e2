"""A job's members and their clocks (pushes accepted from each), and the shard clock.

The shard clock is the slowest *counted* member's clock. It never goes down: a joining worker
starts at the current shard clock (so a worker that (re)joins is not "behind" and stalls
nobody), a leaving worker can only raise the minimum, and a push only raises its sender's clock.
When the member set is empty the shard clock keeps its last value, so a set emptied and
refilled (a coordinator restart) does not send the clock back to 0 under workers that have
seen it.

Members the coordinator excludes (ssp stragglers) are not counted: the others stop waiting for
them. Excluding only raises the minimum; counting a worker again could lower it, so a worker
taken off the excluded list re-enters only once its clock has caught up with the shard clock
and stays effectively excluded until then. A worker that reads the parameters while excluded
(:meth:`MemberClocks.read`) has seen the current clock, so its own clock is raised to it; that
is also what lets a re-entering worker re-enter at its next pull. If every member is excluded
the minimum is taken over all of them, still never below the last shard clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pscluster.errors import InvalidArgument


def check_member_ids(worker_ids: Sequence[str], excluded: Sequence[str] = ()) -> None:
    """InvalidArgument unless ``worker_ids`` are distinct non-empty ids and ``excluded`` are
    distinct ids among them."""
    if any(not w for w in worker_ids):
        raise InvalidArgument("worker_ids contains an empty id")
    if len(set(worker_ids)) != len(worker_ids):
        raise InvalidArgument(f"worker_ids has duplicates: {sorted(worker_ids)}")
    strangers = sorted(set(excluded) - set(worker_ids))
    if strangers:
        raise InvalidArgument(
            f"excluded_worker_ids {strangers} are not in worker_ids; exclude only members"
        )
    if len(set(excluded)) != len(excluded):
        raise InvalidArgument(f"excluded_worker_ids has duplicates: {sorted(excluded)}")


class MemberClocks:
    def __init__(self) -> None:
        self._clocks: dict[str, int] = {}
        self._excluded: set[str] = set()  # as the coordinator asked
        self._reentering: set[str] = set()  # asked back in, but behind the shard clock
        self._floor = 0

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._clocks

    @property
    def members(self) -> list[str]:
        return sorted(self._clocks)

    @property
    def excluded(self) -> list[str]:
        """Members not counted in the shard clock: excluded, or re-entering and still behind."""
        return sorted(self._excluded | self._reentering)

    @property
    def clock(self) -> int:
        counted = self._counted()
        if not counted:
            return self._floor
        return max(self._floor, min(counted.values()))

    def of(self, worker_id: str) -> int:
        return self._clocks[worker_id]

    def slowest(self) -> tuple[str, int] | None:
        """The counted member with the lowest clock (ties: the first name in order), or None."""
        counted = self._counted()
        if not counted:
            return None
        worker = min(sorted(counted), key=counted.__getitem__)
        return worker, counted[worker]

    def set_members(
        self, worker_ids: Iterable[str], excluded: Iterable[str] = ()
    ) -> tuple[list[str], list[str]]:
        """Replace the member set and the excluded ones among them; returns the (added,
        removed) workers, each sorted. The caller checks that ``excluded`` are members."""
        wanted = set(worker_ids)
        removed = sorted(set(self._clocks) - wanted)
        added = sorted(wanted - set(self._clocks))
        for worker in removed:
            del self._clocks[worker]
        asked = set(excluded) & wanted
        # Those no longer excluded must first catch up (checked by _settle below).
        self._reentering = ((self._excluded | self._reentering) - asked) & set(self._clocks)
        self._excluded = asked
        start = self.clock  # the counted members' minimum, or the last shard clock
        for worker in added:
            self._clocks[worker] = start
        self._settle()
        return added, removed

    def tick(self, worker_id: str) -> None:
        self._clocks[worker_id] += 1
        self._settle()

    def read(self, worker_id: str) -> None:
        """``worker_id`` has just read the current parameters: an uncounted worker is not
        behind any more, so its clock is raised to the shard clock (and it may re-enter)."""
        if worker_id in self._excluded or worker_id in self._reentering:
            self._clocks[worker_id] = max(self._clocks[worker_id], self.clock)
            self._settle()

    def snapshot(self) -> dict[str, int]:
        return dict(self._clocks)

    def state(self) -> dict[str, object]:
        """Everything that decides the clock, as JSON-able data (for checkpoints)."""
        return {
            "clocks": dict(self._clocks),
            "excluded": sorted(self._excluded),
            "reentering": sorted(self._reentering),
            "floor": self._floor,
        }

    def load_state(self, state: dict[str, object]) -> None:
        """Become what :meth:`state` described."""
        clocks = state["clocks"]
        excluded, reentering = state["excluded"], state["reentering"]
        floor = state["floor"]
        if not (isinstance(clocks, dict) and isinstance(excluded, list)):
            raise ValueError(f"clock state needs a clocks object and lists, got {state}")
        if not (isinstance(reentering, list) and isinstance(floor, int)):
            raise ValueError(f"clock state needs reentering and an integer floor, got {state}")
        self._clocks = {str(w): int(c) for w, c in clocks.items()}
        self._excluded = {str(w) for w in excluded}
        self._reentering = {str(w) for w in reentering}
        self._floor = floor

    def _counted(self) -> dict[str, int]:
        counted = {
            w: c
            for w, c in self._clocks.items()
            if w not in self._excluded and w not in self._reentering
        }
        # Every member excluded: the slowest of all still paces the clock (never below floor).
        return counted or self._clocks

    def _settle(self) -> None:
        """Let caught-up workers re-enter, then remember the clock as the new floor."""
        for worker in sorted(self._reentering):
            # Counting a worker at or above the shard clock cannot lower the minimum.
            if self._clocks[worker] >= self.clock:
                self._reentering.discard(worker)
        self._floor = self.clock
