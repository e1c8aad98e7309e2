"""A dynamic embedding table on one shard: any id >= 0, rows created when admitted.

Rows live in slots of arrays that double when full (values, the row optimizer's state, and
three bookkeeping arrays); `IdIndex` maps ids to slots and reuses the slots of evicted rows.
Everything a row does is decided by the sequence of `admit` and `apply` calls alone, and a
row starts from values drawn from (init_seed, id) alone, so recovery rebuilds a shard by
replaying the admissions it logged (`take_admitted`) and the pushes, and gets the same bits.

Memory per row, dim 16 with rowwise_adagrad: values 64 B + optimizer 4 B, plus 20 B of
bookkeeping (the slot's id, its last update, its update count), per slot of the doubled
arrays; plus the index, 12 B per position at most 60% full (20-40 B per id, 25 B at 1M).
At 1M rows (arrays 95% full) that is ~118 B per row, 1.73x the 68 B of values and optimizer
state; just after a doubling the arrays cost twice their rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from pscluster.errors import InvalidArgument, ResourceExhausted
from pscluster.model.partition import HashRows
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.index import Admission, IdIndex
from pscluster.server.tables.initial import distinct, first_appearances, initial_rows
from pscluster.server.tables.optimizers import RowOptimizer, make_row_optimizer
from pscluster.server.tables.spec import TableSpec

I64 = npt.NDArray[np.int64]
INITIAL_SLOTS = 1024  # grown by doubling: 1024 * 2**k slots, whatever the history
COUNT_MAX = np.iinfo(np.int32).max  # update counts saturate rather than wrap
_COUNTERS = ("updates", "admitted", "evicted", "dropped_rows")  # checkpointed as scalars


def _doubled(size: int, needed: int) -> int:
    while size < needed:
        size *= 2
    return size


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


class _Slots(NamedTuple):
    """A table's per-slot arrays, made and swapped in whole so a failed growth or load
    leaves the table as it was."""

    values: torch.Tensor
    opt: RowOptimizer
    ids: I64  # the id in each slot, -1 where free
    last_update: I64
    update_count: npt.NDArray[np.int32]


class DynamicTable:
    """The same methods as `FixedTable` (so a job holds either), plus `admit`,
    `take_admitted` and the counters `admitted`, `evicted`, `dropped_rows`, `rows`."""

    def __init__(self, spec: TableSpec, optimizer: SparseOptimizerSpec) -> None:
        self.spec = spec
        self._optimizer = optimizer
        self.index = IdIndex()
        self.admission = Admission(spec.admit_after)
        self.updates = 0  # apply calls so far: the clock of last_update and eviction by age
        self.admitted = self.evicted = self.dropped_rows = 0
        self._new: list[I64] = []
        self._fresh = make_row_optimizer(optimizer, 1, spec.dim).state()  # a new row's state
        self._s = self._slots(INITIAL_SLOTS, 0, None)

    @property
    def rows(self) -> int:
        return len(self.index)

    # --- slots ---

    def _slots(self, size: int, used: int, like: _Slots | None) -> _Slots:
        """Arrays for `size` slots with the first `used` copied from `like`; the optimizer is
        made anew for the size and given the old state and scalars (lazy_adam's step count)
        through `load`. ResourceExhausted if they do not fit."""
        try:
            values = torch.empty((size, self.spec.dim), dtype=torch.float32)
            opt = make_row_optimizer(self._optimizer, size, self.spec.dim)
        except (MemoryError, RuntimeError):
            raise ResourceExhausted(
                f"table {self.spec.name!r}: this shard cannot hold {size} rows of "
                f"{self.spec.dim} values and their optimizer state; lower its capacity or "
                "spread the job over more shards"
            ) from None
        new = _Slots(
            values, opt, np.full(size, -1), np.zeros(size, np.int64), np.zeros(size, np.int32)
        )
        if like is not None:
            new.values[:used] = like.values[:used]
            tails = opt.state()
            old = {k: torch.cat([v[:used], tails[k][used:]]) for k, v in like.opt.state().items()}
            opt.load(old, like.opt.scalars())
            new.ids[:used], new.last_update[:used] = like.ids[:used], like.last_update[:used]
            new.update_count[:used] = like.update_count[:used]
        return new

    def _reserve(self, needed: int) -> None:
        """At least `needed` slots, doubling."""
        held = self._s.values.shape[0]
        if needed > held:
            self._s = self._slots(_doubled(held, needed), held, self._s)

    def _owned(self, ids: torch.Tensor | npt.ArrayLike) -> I64:
        """`ids` as int64 numpy; InvalidArgument naming the first id this shard does not own,
        before anything is read or changed."""
        ids = torch.as_tensor(ids)
        spec = self.spec
        if ids.dim() != 1 or (ids.numel() and ids.dtype != torch.int64):
            raise InvalidArgument(
                f"table {spec.name!r}: ids must be a 1-D int64 tensor, got {ids.dtype} of "
                f"shape {tuple(ids.shape)}; nothing was read or changed"
            )
        ids = ids.to(torch.int64)
        owner = HashRows().owner(ids.clamp(min=0), spec.shards)
        bad = (ids < 0) | (owner != spec.shard_index)
        if bool(bad.any()):
            first = int(ids[bad.nonzero()[0, 0]])
            if first < 0:
                why = "negative (a dynamic table takes ids >= 0)"
            else:
                shard = int(HashRows().owner(torch.tensor([first]), spec.shards)[0])
                why = f"owned by shard {shard} of {spec.shards}, not this one"
            raise InvalidArgument(
                f"table {spec.name!r}: id {first} is {why}; {int(bad.sum())} of "
                f"{ids.numel()} ids are refused and nothing was read or changed"
            )
        owned: I64 = ids.contiguous().numpy()
        return owned

    def _insert(self, new: I64) -> None:
        """Rows for `new` (distinct, absent ids): initial values, a new optimizer state (a
        slot may have held an evicted row), and the age of a row just updated."""
        if not new.size:
            return
        self._reserve(max(self.index.slots_in_use, self.rows + new.size))  # free slots first
        slots = self.index.insert(new)
        at = torch.from_numpy(slots)
        self._s.values[at] = initial_rows(
            self.spec.init_seed, new, self.spec.dim, self.spec.init_std
        )
        for name, tensor in self._s.opt.state().items():  # the row optimizers lend, not copy
            tensor[at] = self._fresh[name]
        self._s.ids[slots] = new
        self._s.last_update[slots] = self.updates
        self._s.update_count[slots] = 0
        self.admitted += new.size
        self._new.append(new)

    # --- admission ---

    def admit(self, ids: torch.Tensor | npt.ArrayLike) -> int:
        """Rows for these ids now, without counting them (recovery replays the admissions the
        live shard logged); ids already present are left as they are. New ids take slots in
        the order of their first appearance, as the live shard gave them. Returns how many
        were new. They are recorded for `take_admitted` too, which recovery drains."""
        arr = self._owned(ids)
        new = first_appearances(arr[self.index.find(arr) < 0])
        self._insert(new)
        return int(new.size)

    def take_admitted(self) -> I64:
        """The ids admitted since the last call, in admission order (a lookup admits its new
        ids in ascending order), for the caller to log; `admit` of them replays this."""
        taken = np.concatenate(self._new) if self._new else np.zeros(0, np.int64)
        self._new = []
        return taken

    # --- reading and updating ---

    def lookup(self, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        """The rows of `ids` (repeats included). Absent ids are counted once per call by the
        admission filter; those admitted now get rows, the rest read their initial values.
        A `peek` (an observer's read) counts nothing and admits nothing."""
        arr = self._owned(ids)
        slots = self.index.find(arr)
        missing = np.flatnonzero(slots < 0)
        if missing.size and not peek:
            seen = distinct(arr[missing])
            self._insert(seen[self.admission.observe(seen)])
            slots[missing] = self.index.find(arr[missing])
        out = self._s.values.index_select(0, torch.from_numpy(np.maximum(slots, 0)))
        cold = np.flatnonzero(slots < 0)
        if cold.size:
            spec = self.spec
            out[torch.from_numpy(cold)] = initial_rows(
                spec.init_seed, arr[cold], spec.dim, spec.init_std
            )
        return out

    def check_gradient(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """InvalidArgument unless `grads` is one row of the table's width per id of ours."""
        if grads.shape != (ids.numel(), self.spec.dim):
            raise InvalidArgument(
                f"table {self.spec.name!r}: a gradient of shape {tuple(grads.shape)} for "
                f"{ids.numel()} ids; expected ({ids.numel()}, {self.spec.dim})"
            )
        self._owned(ids)

    def apply(self, ids: torch.Tensor, grads: torch.Tensor) -> int:
        """One optimizer step on the present rows of `ids` (repeats summed first, as
        FixedTable does); absent ids' gradients are dropped and counted in `dropped_rows`
        (once per distinct id). Then eviction. Returns the rows stepped."""
        arr = self._owned(ids)
        slots = self.index.find(arr)
        present = slots >= 0
        self.updates += 1
        stepped = 0
        if not present.all():
            self.dropped_rows += int(distinct(arr[~present]).size)
            grads = grads[torch.from_numpy(present)]
            slots = slots[present]
        if slots.size:
            unique, inverse = torch.unique(torch.from_numpy(slots), return_inverse=True)
            summed = torch.zeros((unique.numel(), self.spec.dim), dtype=torch.float32)
            self._s.opt.step(self._s.values, unique, summed.index_add_(0, inverse, grads))
            touched = unique.numpy()
            self._s.last_update[touched] = self.updates
            counts = self._s.update_count[touched]
            self._s.update_count[touched] = counts + (counts < COUNT_MAX)
            stepped = int(unique.numel())
        self._evict()
        return stepped

    # --- eviction ---

    def _evict(self) -> None:
        """Rows not updated in `evict_after` applies go, checked only every evict_after // 8
        applies (a scan of every slot each apply would cost more than the step): a row lives
        at most that many applies past its limit. Then, beyond `capacity`, the least often
        updated rows go (ties: the least recently updated, then the lowest slot)."""
        spec, used = self.spec, self.index.slots_in_use
        if spec.evict_after > 0 and self.updates % max(1, spec.evict_after // 8) == 0:
            live = self._s.ids[:used] >= 0
            old = self._s.last_update[:used] < self.updates - spec.evict_after
            self._drop(np.flatnonzero(live & old))
        if spec.capacity > 0 and self.rows > spec.capacity:
            self._drop(self._least_used(self.rows - spec.capacity))

    def _least_used(self, excess: int) -> I64:
        """The `excess` slots first in (update count, last update, slot) order, by two
        partitions rather than a sort of every row."""
        live = np.flatnonzero(self._s.ids[: self.index.slots_in_use] >= 0)
        count = self._s.update_count[live]
        kth = np.partition(count, excess - 1)[excess - 1]
        below, tie = live[count < kth], live[count == kth]
        need = excess - below.size
        age = self._s.last_update[tie]
        cut = np.partition(age, need - 1)[need - 1]
        older, same = tie[age < cut], tie[age == cut]
        return np.concatenate([below, older, same[: need - older.size]])

    def _drop(self, slots: I64) -> None:
        if slots.size:
            self.index.remove(self._s.ids[slots])
            self._s.ids[slots] = -1
            self.evicted += int(slots.size)

    # --- checkpoints ---

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Copies of the used slots' rows, optimizer state and bookkeeping, the index and
        the admission counts; the counters and the optimizer's scalars."""
        used = self.index.slots_in_use
        tensors = {
            "values": self._s.values[:used].clone(),
            "last_update": torch.from_numpy(self._s.last_update[:used].copy()),
            "update_count": torch.from_numpy(self._s.update_count[:used].copy()),
        }
        tensors.update({f"opt.{k}": v[:used].clone() for k, v in self._s.opt.state().items()})
        for prefix, part in (("index", self.index.state()), ("admission", self.admission.state())):
            tensors.update({f"{prefix}.{k}": torch.from_numpy(v) for k, v in part.items()})
        scalars = {f"opt.{k}": v for k, v in self._s.opt.scalars().items()}
        scalars.update({k: float(getattr(self, k)) for k in _COUNTERS})
        return tensors, scalars

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
        """The table `state()` was taken from; InvalidArgument, changing nothing, if the
        checkpoint's parts do not fit together or this table."""
        try:
            index, admission, like, counters = self._restored(tensors, scalars)
        except (KeyError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"table {self.spec.name!r}: a bad checkpoint: {e}") from None
        used = index.slots_in_use
        self._s = self._slots(_doubled(INITIAL_SLOTS, used), used, like)
        self.index, self.admission, self._new = index, admission, []
        self.updates, self.admitted, self.evicted, self.dropped_rows = counters

    def _restored(
        self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]
    ) -> tuple[IdIndex, Admission, _Slots, list[int]]:
        index = IdIndex.from_state(_numpy(_part(tensors, "index")))
        admission = Admission.from_state(self.spec.admit_after, _numpy(_part(tensors, "admission")))
        used, dim = index.slots_in_use, self.spec.dim
        shapes = [tuple(tensors[k].shape) for k in ("values", "last_update", "update_count")]
        if shapes != [(used, dim), (used,), (used,)]:
            raise ValueError(f"per-slot tensors of shapes {shapes} for {used} slots of width {dim}")
        opt = make_row_optimizer(self._optimizer, used, dim)  # its load checks the shapes
        opt.load(_part(tensors, "opt"), {k[4:]: v for k, v in scalars.items() if k[:4] == "opt."})
        last, count = tensors["last_update"].numpy(), tensors["update_count"].numpy()
        like = _Slots(tensors["values"], opt, np.full(used, -1), last, count)
        ids, slots = index.items()
        like.ids[slots] = ids
        return index, admission, like, [int(scalars[k]) for k in _COUNTERS]

    def nbytes(self) -> int:
        """Every array the table holds: slots (used or not), index and admission counts."""
        held = [self._s.values, *self._s.opt.state().values()]
        arrays = self._s.ids.nbytes + self._s.last_update.nbytes + self._s.update_count.nbytes
        tensors = sum(t.numel() * t.element_size() for t in held)
        return tensors + int(arrays) + self.index.nbytes() + self.admission.nbytes()

    def hot(self, k: int) -> tuple[list[int], list[int]]:
        """The ``k`` most often updated ids held here and their update counts."""
        counts = torch.from_numpy(self._s.update_count.astype(np.int64))
        counts[torch.from_numpy(self._s.ids < 0)] = 0
        k = min(k, counts.numel())
        if k == 0:
            return [], []
        top, slots = torch.topk(counts, k)
        keep = top > 0
        ids = self._s.ids[slots[keep].numpy()]
        return [int(i) for i in ids], top[keep].tolist()
