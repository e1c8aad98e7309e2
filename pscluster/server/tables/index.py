"""Which row of a dynamic embedding table holds a feature id, and which ids are admitted.

`IdIndex` maps int64 ids to the dense rows ("slots") of a table's preallocated value array:
open addressing with linear probing over a power-of-two table, all numpy, so a batch of
10k-100k ids costs a few whole-array operations per probe round, never a Python loop over ids
(a dict would cost ~100 B per id and an interpreter step per lookup).

Ids are >= 0: the table refuses negative ids before calling here, which leaves the negative
keys free for the EMPTY and TOMBSTONE markers (negative ids are refused here too, rather than
silently colliding with them).

Memory: an int64 key and an int32 slot per position, at most 60% of positions used (live ids
and tombstones), so an id costs 12 B / load: 20 B just before a doubling, 40 B just after;
25 B at 1M ids. Int32 slots limit a table to 2**31 rows, far beyond what a shard holds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pscluster.hashing import mix64

I64 = npt.NDArray[np.int64]
Pos = npt.NDArray[np.intp]

EMPTY = -1
TOMBSTONE = -2
MAX_LOAD = 0.6  # live ids and tombstones over positions; linear probing slows sharply past ~0.7
PURGE_BELOW = 0.5  # a same-size rehash (dropping tombstones) must leave this much room, else grow
MAX_SLOTS = 2**31  # slots are stored as int32


def check_ids(ids: npt.ArrayLike) -> I64:
    """`ids` as a 1-D int64 array, or ValueError saying what was wrong."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"ids must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    out = arr.astype(np.int64, copy=False)  # uint64 past 2**63 wraps negative: refused below
    if out.size and int(out.min()) < 0:
        raise ValueError(f"ids must be >= 0 and < 2**63, got {int(out.min())}")
    return out


def _distinct(ids: I64) -> I64:
    """The distinct ids, ascending. Sorting, not np.unique: numpy 2.4's hash-based unique
    takes ~1 s on 1M random int64 ids where a sort takes 50 ms."""
    ordered = np.sort(ids)
    return ordered[_starts(ordered)]


def _starts(ordered: I64) -> npt.NDArray[np.bool_]:
    """Where a new value begins in sorted ids (>= 0, so the first differs from -1)."""
    starts: npt.NDArray[np.bool_] = np.diff(ordered, prepend=-1) != 0
    return starts


def _first_seen(ids: I64) -> tuple[npt.NDArray[np.bool_], Pos]:
    """Where each distinct id first appears, and for every id the index of its value in
    ``ids[first]``: new ids get slots in the order they appear, with one stable sort."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    starts = _starts(ordered)
    first_at = order[starts]  # per distinct id, ascending by id
    first = np.zeros(ids.size, np.bool_)
    first[first_at] = True
    rank = np.empty(ids.size, np.intp)
    rank[order] = (np.cumsum(first) - 1)[first_at][np.cumsum(starts) - 1]
    return first, rank


def _positions_for(n: int, at_least: int = 8) -> int:
    """The smallest power of two >= at_least that holds n ids within MAX_LOAD."""
    cap = at_least
    while n > MAX_LOAD * cap:
        cap *= 2
    return cap


class IdIndex:
    """Open-addressing hash map int64 id -> int64 slot, vectorised.

    A new id takes the lowest slot freed by `remove`, else the next unused one, so the value
    array only grows to the peak number of ids (`slots_in_use`).

    >>> index = IdIndex()
    >>> index.insert(np.array([7, 3, 7])).tolist(), index.find(np.array([3, 9])).tolist()
    ([0, 1, 0], [1, -1])
    """

    def __init__(self, initial_capacity: int = 1024) -> None:
        """Sized to hold `initial_capacity` ids before its first rehash."""
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {initial_capacity}")
        self._alloc(_positions_for(initial_capacity))
        self._live = 0
        self._next_slot = 0
        self._free = np.empty(0, np.int32)  # sorted: the lowest freed slot is reused first

    def _alloc(self, positions: int) -> None:
        self._keys = np.full(positions, EMPTY, np.int64)
        self._slots = np.full(positions, -1, np.int32)
        self._shift = np.uint64(64 - (positions.bit_length() - 1))
        self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    @property
    def slots_in_use(self) -> int:
        """Highest slot ever handed out + 1: the length the value array needs."""
        return self._next_slot

    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._slots.nbytes + self._free.nbytes)

    def _home(self, ids: I64) -> Pos:
        return (mix64(ids) >> self._shift).astype(np.intp)

    def _lookup(self, ids: I64) -> Pos:
        """The position of each id, -1 where absent. A probe passes tombstones and ends at an
        EMPTY, of which there is always one (load <= 0.6)."""
        found = np.full(ids.size, -1, np.intp)
        todo, want, pos = np.arange(ids.size), ids, self._home(ids)
        mask = self._keys.size - 1
        while todo.size:
            key = self._keys[pos]
            hit = key == want
            found[todo[hit]] = pos[hit]
            go = ~hit & (key != EMPTY)
            todo, want, pos = todo[go], want[go], (pos[go] + 1) & mask
        return found

    def _place(self, keys: I64, slots: I64) -> None:
        """Writes distinct ids known to be absent. When ids of one batch claim the same free
        position, the first claimant takes it and the rest probe on: a minimum over claimant
        numbers in the claimed (free, so unused) `_slots` entries, deterministic like
        np.unique(return_index) and ~10x faster than its sort."""
        pos, mask = self._home(keys), self._keys.size - 1
        while keys.size:
            free = np.flatnonzero(self._keys[pos] < 0)  # EMPTY or TOMBSTONE: both reusable
            claimed = pos[free]
            self._slots[claimed] = np.iinfo(np.int32).max
            np.minimum.at(self._slots, claimed, free.astype(np.int32))
            win = free[self._slots[claimed] == free]
            won = pos[win]
            self._tombstones -= int(np.count_nonzero(self._keys[won] == TOMBSTONE))
            self._keys[won] = keys[win]
            self._slots[won] = slots[win]
            go = np.ones(keys.size, np.bool_)
            go[win] = False
            keys, slots, pos = keys[go], slots[go], (pos[go] + 1) & mask

    def _reserve(self, new: int) -> None:
        """Room for `new` more ids within MAX_LOAD, rehashing (which drops tombstones) if not;
        at the same size only if that leaves real room, lest churn rehash on every insert."""
        positions = self._keys.size
        if self._live + self._tombstones + new <= MAX_LOAD * positions:
            return
        grown = _positions_for(self._live + new, positions)
        if grown == positions and self._live + new > PURGE_BELOW * positions:
            grown *= 2
        live = np.flatnonzero(self._keys >= 0)
        keys, slots = self._keys[live], self._slots[live].astype(np.int64)
        self._alloc(grown)
        self._place(keys, slots)

    def find(self, ids: npt.ArrayLike) -> I64:
        """The slot of each id, -1 where absent; ids may repeat."""
        ids = check_ids(ids)
        pos = self._lookup(ids)
        out = np.full(ids.size, -1, np.int64)
        present = pos >= 0
        out[present] = self._slots[pos[present]]
        return out

    def insert(self, ids: npt.ArrayLike) -> I64:
        """The slot of each id, giving new ids slots (lowest free first, in the order of their
        first appearance in `ids`); ids may repeat, present ids keep their slots."""
        ids = check_ids(ids)
        out = self.find(ids)
        absent = np.flatnonzero(out < 0)
        if not absent.size:
            return out
        is_first, rank = _first_seen(ids[absent])
        new = ids[absent][is_first]
        reuse = min(new.size, self._free.size)
        fresh = new.size - reuse
        if self._next_slot + fresh > MAX_SLOTS:
            raise OverflowError(f"an index holds at most {MAX_SLOTS} slots")
        slots = np.concatenate(
            [self._free[:reuse], np.arange(self._next_slot, self._next_slot + fresh)]
        ).astype(np.int64)
        self._reserve(new.size)
        self._place(new, slots)
        self._live += new.size
        self._free = self._free[reuse:].copy()  # a view would keep the old array alive
        self._next_slot += fresh
        out[absent] = slots[rank]
        return out

    def remove(self, ids: npt.ArrayLike) -> I64:
        """Removes the present ids; returns the slots freed (ascending), which later inserts
        reuse. Absent ids are ignored."""
        pos = self._lookup(_distinct(check_ids(ids)))
        pos = pos[pos >= 0]
        freed = np.sort(self._slots[pos]).astype(np.int64)
        self._keys[pos] = TOMBSTONE
        self._slots[pos] = -1
        self._live -= pos.size
        self._tombstones += pos.size
        self._free = np.sort(np.concatenate([self._free, freed.astype(np.int32)]))
        return freed

    def items(self) -> tuple[I64, I64]:
        """(ids, slots) of every present id, sorted by slot."""
        live = np.flatnonzero(self._keys >= 0)
        slots = self._slots[live].astype(np.int64)
        order = np.argsort(slots)
        return self._keys[live][order], slots[order]

    def state(self) -> dict[str, I64]:
        """What a checkpoint needs (16 B per id): the pairs and the free list; the hash table
        is rebuilt by `from_state`, so a restore may size or hash it differently."""
        ids, slots = self.items()
        return {
            "ids": ids,
            "slots": slots,
            "free": self._free.astype(np.int64),
            "slots_in_use": np.array([self._next_slot], np.int64),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> IdIndex:
        """The index `state()` was taken from; ValueError if the arrays do not fit together."""
        missing = {"ids", "slots", "free", "slots_in_use"} - state.keys()
        if missing:
            raise ValueError(f"index state lacks {sorted(missing)}")
        ids = check_ids(state["ids"])
        slots, free = check_ids(state["slots"]), check_ids(state["free"])
        used = np.asarray(state["slots_in_use"]).reshape(-1)
        if used.size != 1 or used.dtype.kind not in "iu" or not 0 <= int(used[0]) <= MAX_SLOTS:
            raise ValueError(f"slots_in_use must be one integer in [0, 2**31], got {used}")
        if slots.size != ids.size or _distinct(ids).size != ids.size:
            raise ValueError(f"state has {ids.size} ids, {slots.size} slots: want distinct ids")
        # every slot ever handed out is either held by an id or free, exactly once
        if not np.array_equal(np.sort(np.concatenate([slots, free])), np.arange(int(used[0]))):
            raise ValueError(f"held and free slots are not exactly 0..{int(used[0]) - 1}")
        index = cls(max(ids.size, 1))
        index._place(ids, slots)
        index._live = ids.size
        index._free = np.sort(free).astype(np.int32)
        index._next_slot = int(used[0])
        return index


class Admission:
    """Counts how often ids not yet admitted were seen; an id is admitted once seen
    `min_count` times (min_count <= 1: admitted at first touch).

    Admitting only ids seen a few times keeps one-off ids (most of a long tail) from taking
    rows and optimizer state. Counts: an `IdIndex` and an int32 array indexed by its slots,
    ~30 B per id counted. Nothing here forgets an id never admitted.
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
        if _distinct(ids).size != ids.size:
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
        if counts.size != ids.size or _distinct(ids).size != ids.size or not counts.all():
            raise ValueError("admission state wants distinct ids, each with a count >= 1")
        admission = cls(min_count)
        if min_count <= 1:
            return admission
        admission._index = IdIndex(max(ids.size, 1))
        admission._counts = np.zeros(ids.size, np.int32)
        admission._counts[admission._index.insert(ids)] = np.minimum(counts, min_count)
        return admission
