"""Which ids not yet in a dynamic table have been seen often enough to get a row."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pscluster.server.tables.index import I64, IdIndex, check_ids
from pscluster.server.tables.initial import distinct


class Admission:
    """Counts how often ids not yet admitted were seen; an id is admitted once seen
    `min_count` times (min_count <= 1: admitted at first touch).

    Admitting only ids seen a few times keeps one-off ids (most of a long tail) from taking
    rows and optimizer state. Counts: an `IdIndex` and an int32 array indexed by its slots,
    ~20 B per id counted. Nothing here forgets an id never admitted.
    """

    def __init__(self, min_count: int) -> None:
        self.min_count = min_count
        self._index = IdIndex(8)
        self._counts = np.zeros(0, np.int32)

    def observe(self, ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Counts one sighting of each id (distinct within a batch); returns the mask of
        those admitted now, aligned with `ids`."""
        ids = check_ids(ids)
        if self.min_count <= 1:
            return np.ones(ids.size, np.bool_)
        if distinct(ids).size != ids.size:
            raise ValueError("observe takes each id once per batch, got repeated ids")
        slots = self._index.insert(ids)
        if self._index.slots_in_use > self._counts.size:
            grown = np.zeros(max(self._index.slots_in_use, 2 * self._counts.size), np.int32)
            grown[: self._counts.size] = self._counts
            self._counts = grown
        self._counts[slots] += 1
        admitted = self._counts[slots] >= self.min_count
        self._counts[self._index.remove(ids[admitted])] = 0  # freed slots start again at 0
        return admitted

    def pending(self) -> int:
        """Ids being counted (seen, not yet admitted)."""
        return len(self._index)

    def nbytes(self) -> int:
        return self._index.nbytes() + int(self._counts.nbytes)

    def state(self) -> dict[str, I64]:
        """The ids being counted and their counts."""
        ids, slots = self._index.items()
        return {"ids": ids, "counts": self._counts[slots].astype(np.int64)}

    @classmethod
    def from_state(cls, min_count: int, state: dict[str, np.ndarray]) -> Admission:
        """The counter `state()` was taken from. Under a lower `min_count` than before, ids
        already past it are admitted at their next sighting; at <= 1 nothing is counted."""
        missing = {"ids", "counts"} - state.keys()
        if missing:
            raise ValueError(f"admission state lacks {sorted(missing)}")
        ids, counts = check_ids(state["ids"]), check_ids(state["counts"])
        if counts.size != ids.size or distinct(ids).size != ids.size or not counts.all():
            raise ValueError("admission state wants distinct ids, each with a count >= 1")
        admission = cls(min_count)
        if min_count <= 1:
            return admission
        admission._index = IdIndex(max(ids.size, 1))
        admission._counts = np.zeros(ids.size, np.int32)
        admission._counts[admission._index.insert(ids)] = np.minimum(counts, min_count)
        return admission
