"""Which row of a dynamic embedding table holds a feature id.

`IdIndex` maps int64 ids to the dense rows ("slots") of a table's arrays, all numpy, so a
batch of 10k-100k ids costs a few whole-array operations per probe round, never a Python loop
over ids (a dict would cost ~100 B per id and an interpreter step per lookup).

Layout, chosen for memory (the index is most of what a dynamic row costs beyond its values):
- ``_ids``: the id in each slot (int64, -1 where freed). The table needs this reverse map
  anyway (eviction, export, hot ids), so the hash table does not store keys a second time.
- ``_pos``: open addressing with linear probing, an int32 slot per position (EMPTY or
  TOMBSTONE when negative); a probe compares ``_ids[_pos[p]]`` with the id it looks for.
  At most 80% of positions are used (live ids and tombstones), and a full table grows 1.3x
  (not 2x: a rehash is vectorised and rare, memory is not), so an id costs 4 B / load:
  5-6.5 B. Positions are any number, not a power of two: an id's
  home is the high half of its hash scaled to the table (Lemire's multiply-shift).

So an id costs 13-14.5 B in all. Ids are >= 0: the table refuses negative ids before calling
here, and they are refused here too. Int32 slots limit a table to 2**31 rows on a shard.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from pscluster.hashing import mix64
from pscluster.heap import give_back_freed
from pscluster.server.tables.initial import distinct
from pscluster.server.tables.lazy import lazy_zeros, regrown, reservation

I64 = npt.NDArray[np.int64]
Pos = npt.NDArray[np.intp]

EMPTY = -1
TOMBSTONE = -2
MAX_LOAD = 0.8  # live ids and tombstones over positions
GROWTH = 1.3
PURGE_BELOW = 0.6  # a same-size rehash (dropping tombstones) must leave this much room, else grow
MAX_SLOTS = 2**31  # slots are int32; positions stay below 2**32 for the multiply-shift
_CLAIMED = np.iinfo(np.int32).max
# A rehash places the ids in pieces: its temporaries (~40 B an id placed) stay small. Which
# id of a piece wins a contested position changes nothing a caller sees.
REHASH_CHUNK = 1 << 20


def check_ids(ids: npt.ArrayLike) -> I64:
    """`ids` as a 1-D int64 array, or ValueError saying what was wrong."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"ids must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    out = arr.astype(np.int64, copy=False)  # uint64 past 2**63 wraps negative: refused below
    if out.size and int(out.min()) < 0:
        raise ValueError(f"ids must be >= 0 and < 2**63, got {int(out.min())}")
    return out


def _first_seen(ids: I64) -> tuple[npt.NDArray[np.bool_], Pos]:
    """Where each distinct id first appears, and for every id the index of its value in
    ``ids[first]``: new ids get slots in the order they appear, with one stable sort."""
    order = np.argsort(ids, kind="stable")
    starts = np.diff(ids[order], prepend=-1) != 0
    first_at = order[starts]  # per distinct id, ascending by id
    first = np.zeros(ids.size, np.bool_)
    first[first_at] = True
    rank = np.empty(ids.size, np.intp)
    rank[order] = (np.cumsum(first) - 1)[first_at][np.cumsum(starts) - 1]
    return first, rank


def _positions_for(n: int, at_least: int = 8) -> int:
    """The first of at_least * GROWTH**k positions that holds n ids within MAX_LOAD."""
    size = at_least
    while n > MAX_LOAD * size:
        size = math.ceil(size * GROWTH)
    return size


class IdIndex:
    """Open-addressing hash map int64 id -> slot, vectorised.

    A new id takes the lowest slot freed by `remove`, else the next unused one, so a table's
    arrays only grow to the peak number of ids (`slots_in_use`).

    >>> index = IdIndex()
    >>> index.insert(np.array([7, 3, 7])).tolist(), index.find(np.array([3, 9])).tolist()
    ([0, 1, 0], [1, -1])
    """

    def __init__(self, initial_capacity: int = 1024) -> None:
        """Sized to hold `initial_capacity` ids before its first rehash."""
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {initial_capacity}")
        self._alloc(_positions_for(initial_capacity))
        self._ids = lazy_zeros((reservation(initial_capacity),), np.int64)
        self._live = 0
        self._next_slot = 0
        self._free = np.empty(0, np.int32)  # sorted: the lowest freed slot is reused first

    def _alloc(self, positions: int) -> None:
        self._pos = np.full(positions, EMPTY, np.int32)
        self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    @property
    def positions(self) -> int:
        return int(self._pos.size)

    @property
    def slots_in_use(self) -> int:
        """Highest slot ever handed out + 1: the length the table's arrays need."""
        return self._next_slot

    def slot_ids(self) -> I64:
        """The id in each slot in use, -1 where freed (a view: read it, do not keep it)."""
        return self._ids[: self._next_slot]

    def free_slots(self) -> I64:
        """The slots freed and not yet reused, ascending."""
        return self._free.astype(np.int64)

    def nbytes(self) -> int:
        """Memory in use: positions, the ids of the slots handed out, the free list."""
        return int(self._pos.nbytes + 8 * self._next_slot + self._free.nbytes)

    def _home(self, ids: I64) -> Pos:
        high = mix64(ids) >> np.uint64(32)
        return ((high * np.uint64(self._pos.size)) >> np.uint64(32)).astype(np.intp)

    def _next(self, pos: Pos) -> Pos:
        pos += 1
        pos[pos == self._pos.size] = 0
        return pos

    def _lookup(self, ids: I64) -> Pos:
        """The position of each id, -1 where absent. A probe passes tombstones and ends at an
        EMPTY, of which there is always one (load <= 0.8)."""
        found = np.full(ids.size, -1, np.intp)
        todo, want, pos = np.arange(ids.size), ids, self._home(ids)
        while todo.size:
            slot = self._pos[pos]
            key = np.where(slot >= 0, self._ids[np.maximum(slot, 0)], -1)
            hit = key == want
            found[todo[hit]] = pos[hit]
            go = ~hit & (slot != EMPTY)
            todo, want, pos = todo[go], want[go], self._next(pos[go])
        return found

    def _place(self, ids: I64, slots: I64) -> None:
        """Gives distinct ids known to be absent positions holding their slots. When ids of
        one batch claim the same free position, the first claimant takes it and the rest probe
        on: a minimum over claimant numbers written into the claimed (free) positions,
        deterministic like np.unique(return_index) and ~10x faster than its sort."""
        pos = self._home(ids)
        while slots.size:
            held = self._pos[pos]
            free = np.flatnonzero(held < 0)  # EMPTY or TOMBSTONE: both reusable
            claimed = pos[free]
            self._pos[claimed] = _CLAIMED
            np.minimum.at(self._pos, claimed, free.astype(np.int32))
            win = free[self._pos[claimed] == free]
            self._tombstones -= int(np.count_nonzero(held[win] == TOMBSTONE))
            self._pos[pos[win]] = slots[win]
            go = np.ones(slots.size, np.bool_)
            go[win] = False
            slots, pos = slots[go], self._next(pos[go])

    def _reserve(self, new: int) -> None:
        """Room for `new` more ids within MAX_LOAD, rehashing (which drops tombstones) if not;
        at the same size only if that leaves real room, lest churn rehash on every insert."""
        positions = self._pos.size
        if self._live + self._tombstones + new <= MAX_LOAD * positions:
            return
        grown = _positions_for(self._live + new, positions)
        if grown == positions and self._live + new > PURGE_BELOW * positions:
            grown = math.ceil(positions * GROWTH)
        slots = self._pos[self._pos >= 0]
        self._alloc(grown)
        for part in np.array_split(slots, max(1, slots.size // REHASH_CHUNK)):
            held = part.astype(np.int64)
            self._place(self._ids[held], held)
        del slots
        give_back_freed()

    def find(self, ids: npt.ArrayLike) -> I64:
        """The slot of each id, -1 where absent; ids may repeat."""
        ids = check_ids(ids)
        pos = self._lookup(ids)
        out = np.full(ids.size, -1, np.int64)
        present = pos >= 0
        out[present] = self._pos[pos[present]]
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
        self._ids = regrown(self._ids, self._next_slot + fresh, self._next_slot)
        self._ids[slots] = new
        self._place(new, slots)
        self._live += new.size
        self._free = self._free[reuse:].copy()  # a view would keep the old array alive
        self._next_slot += fresh
        out[absent] = slots[rank]
        return out

    def remove(self, ids: npt.ArrayLike) -> I64:
        """Removes the present ids; returns the slots freed (ascending), which later inserts
        reuse. Absent ids are ignored."""
        pos = self._lookup(distinct(check_ids(ids)))
        pos = pos[pos >= 0]
        freed = np.sort(self._pos[pos]).astype(np.int64)
        self._pos[pos] = TOMBSTONE
        self._ids[freed] = -1
        self._live -= pos.size
        self._tombstones += pos.size
        self._free = np.sort(np.concatenate([self._free, freed.astype(np.int32)]))
        return freed

    def items(self) -> tuple[I64, I64]:
        """(ids, slots) of every present id, sorted by slot."""
        slots = np.flatnonzero(self.slot_ids() >= 0).astype(np.int64)
        return self._ids[slots].copy(), slots

    def state(self) -> dict[str, I64]:
        """What a checkpoint needs (16 B per id): the pairs and the free list; the hash table
        is rebuilt by `from_state`, so a restore may size it differently."""
        ids, slots = self.items()
        return {
            "ids": ids,
            "slots": slots,
            "free": self.free_slots(),
            "slots_in_use": np.array([self._next_slot], np.int64),
        }

    def changed(self, used: int, slots: I64, ids: I64, free: I64) -> IdIndex:
        """A new index of `used` slots: these, with `ids` now in `slots` and `free` freed (an
        incremental checkpoint's changes); ValueError if the slots do not add up."""
        held = np.full(used, -1, np.int64)
        old = self.slot_ids()[:used]
        held[: old.size] = old
        held[free] = -1
        held[slots] = ids
        live = np.flatnonzero(held >= 0)
        state = {"ids": held[live], "slots": live, "free": free, "slots_in_use": np.array([used])}
        return IdIndex.from_state(state)

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
        if slots.size != ids.size or distinct(ids).size != ids.size:
            raise ValueError(f"state has {ids.size} ids, {slots.size} slots: want distinct ids")
        # every slot ever handed out is either held by an id or free, exactly once
        if not np.array_equal(np.sort(np.concatenate([slots, free])), np.arange(int(used[0]))):
            raise ValueError(f"held and free slots are not exactly 0..{int(used[0]) - 1}")
        index = cls(max(ids.size, 1))
        index._next_slot = int(used[0])
        index._ids = regrown(index._ids, index._next_slot, 0)
        index._ids[free] = -1
        index._ids[slots] = ids
        index._place(ids, slots)
        index._live = ids.size
        index._free = np.sort(free).astype(np.int32)
        return index
