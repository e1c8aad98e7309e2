"""A dynamic embedding table on one shard: any id >= 0, rows created when admitted.

Rows live in slots of per-row arrays (values, the row optimizer's state, an age and an update
count) reserved far beyond the rows held and taken page by page (`lazy`), so they cost the
rows in use; `IdIndex` maps ids to slots and reuses the slots of evicted rows.
Everything a row does is decided by the sequence of `admit` and `apply` calls alone, and a
row starts from values drawn from (init_seed, id) alone, so recovery rebuilds a shard by
replaying the admissions it logged (`take_admitted`) and the pushes, and gets the same bits.

Memory per row, dim 16 with rowwise_adagrad: values 64 B + optimizer 4 B, plus 4-5 B of
bookkeeping (update count 4 B, a dirty bit, and an age byte only with eviction) and the
index's 13-14.5 B (the slot's id 8 B, its position 4 B at 62-80% load): 85-87.5 B,
1.25-1.29x the 68 B of values and optimizer state.
`bench/table_memory.py` measures it as the shard process's resident memory.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from pscluster.errors import InvalidArgument
from pscluster.heap import give_back_freed
from pscluster.model.partition import HashRows
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables import eviction
from pscluster.server.tables.admission import Admission
from pscluster.server.tables.index import IdIndex
from pscluster.server.tables.initial import distinct, first_appearances, initial_rows
from pscluster.server.tables.lazy import reservation
from pscluster.server.tables.slots import SlotArrays
from pscluster.server.tables.spec import TableSpec, refuse_ids

I64 = npt.NDArray[np.int64]
_COUNTERS = ("updates", "admitted", "evicted", "dropped_rows")  # checkpointed as scalars


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


class DynamicTable:
    """The same methods as `FixedTable` (so a job holds either), plus `admit`,
    `take_admitted` and the counters `admitted`, `evicted`, `dropped_rows`, `rows`."""

    def __init__(self, spec: TableSpec, optimizer: SparseOptimizerSpec) -> None:
        self.spec = spec
        self._optimizer = optimizer
        self.index = IdIndex()
        self.admission = Admission(spec.admit_after)
        self.updates = 0  # apply calls so far: the clock of age ticks
        self.admitted = self.evicted = self.dropped_rows = 0
        self._new: list[I64] = []
        self._s = SlotArrays(spec, optimizer, reservation(0))

    @property
    def rows(self) -> int:
        return len(self.index)

    # --- slots ---

    def _reserve(self, needed: int) -> None:
        """At least `needed` slots: a larger reservation, copying the slots in use."""
        held = self._s.values.shape[0]
        if needed > held:
            self._s = self._s.grown(needed, self.index.slots_in_use)
            give_back_freed()

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

        def why(first: int) -> str:
            if first < 0:
                return "negative (a dynamic table takes ids >= 0)"
            shard = int(HashRows().owner(torch.tensor([first]), spec.shards)[0])
            return f"owned by shard {shard} of {spec.shards}, not this one"

        refuse_ids(spec, ids, (ids < 0) | (owner != spec.shard_index), why)
        owned: I64 = ids.contiguous().numpy()
        return owned

    def _insert(self, new: I64) -> None:
        """Rows for `new` (distinct, absent ids): initial values, a new optimizer state (a
        slot may have held an evicted row), and the age of a row just updated."""
        if not new.size:
            return
        self._reserve(max(self.index.slots_in_use, self.rows + new.size))  # free slots first
        slots = self.index.insert(new)
        spec = self.spec
        self._s.fresh(slots, initial_rows(spec.init_seed, new, spec.dim, spec.init_std))
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
        ticked = self._tick()
        stepped = 0
        if not present.all():
            self.dropped_rows += int(distinct(arr[~present]).size)
            grads = grads[torch.from_numpy(present)]
            slots = slots[present]
        if slots.size:
            unique, inverse = torch.unique(torch.from_numpy(slots), return_inverse=True)
            summed = torch.zeros((unique.numel(), self.spec.dim), dtype=torch.float32)
            self._s.step(unique, summed.index_add_(0, inverse, grads))
            stepped = int(unique.numel())
        self._evict(ticked)
        return stepped

    # --- eviction ---

    def _tick(self) -> bool:
        """Ages every row, before the step, every `period` applies; True if it did. A table
        with neither eviction by age nor a capacity keeps no ages."""
        spec = self.spec
        if spec.evict_after <= 0 and spec.capacity <= 0:
            return False
        if self.updates % eviction.period(spec.evict_after):
            return False
        eviction.tick(self._s.age[: self.index.slots_in_use])
        return True

    def _evict(self, ticked: bool) -> None:
        """Rows untouched for more than `evict_after` applies go at a tick (at most ~1/8 of
        it later); then, beyond `capacity`, the least often updated rows."""
        spec, s = self.spec, self._s
        if spec.evict_after > 0 and ticked:
            self._drop(eviction.expired(self.index.slot_ids(), s.age, spec.evict_after))
        if spec.capacity > 0 and self.rows > spec.capacity:
            excess = self.rows - spec.capacity
            self._drop(eviction.least_used(self.index.slot_ids(), s.update_count, s.age, excess))

    def _drop(self, slots: I64) -> None:
        if slots.size:
            self.index.remove(self.index.slot_ids()[slots].copy())
            self.evicted += int(slots.size)

    # --- checkpoints ---

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Copies of the used slots' rows, optimizer state and bookkeeping, the index and
        the admission counts; the counters and the optimizer's scalars."""
        tensors, opt = self._s.state(self.index.slots_in_use)
        for prefix, part in (("index", self.index.state()), ("admission", self.admission.state())):
            tensors.update({f"{prefix}.{k}": torch.from_numpy(v) for k, v in part.items()})
        return tensors, self._scalars(opt)

    def _scalars(self, opt: dict[str, float]) -> dict[str, float]:
        scalars = {f"opt.{k}": v for k, v in opt.items()}
        scalars.update({k: float(getattr(self, k)) for k in _COUNTERS})
        return scalars

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
        """The table `state()` was taken from; InvalidArgument, changing nothing, if the
        checkpoint's parts do not fit together or this table."""
        try:
            index = IdIndex.from_state(_numpy(_part(tensors, "index")))
            opt = {k[4:]: v for k, v in scalars.items() if k[:4] == "opt."}
            slots = SlotArrays.from_state(
                self.spec, self._optimizer, index.slots_in_use, tensors, opt
            )
            self._restore(index, tensors, scalars)
        except (KeyError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"table {self.spec.name!r}: a bad checkpoint: {e}") from None
        self._s, self.index = slots, index

    def _restore(
        self, index: IdIndex, tensors: dict[str, torch.Tensor], scalars: dict[str, float]
    ) -> None:
        """The admission counts and counters of a checkpoint; raises before changing any."""
        admission = Admission.from_state(self.spec.admit_after, _numpy(_part(tensors, "admission")))
        counters = [int(scalars[k]) for k in _COUNTERS]
        self.admission, self._new = admission, []
        self.updates, self.admitted, self.evicted, self.dropped_rows = counters

    def mark_clean(self) -> None:
        """Every row counts as written by a checkpoint."""
        self._s.take_dirty(self.index.slots_in_use)

    def delta(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """An incremental checkpoint: the slots changed since the last one that hold a row
        (their ids, rows, counts and state), every slot's age (a tick ages every row: a byte
        a row), the free slots and the admission counts; the counters and scalars. The rows
        count as clean afterwards. `load_delta` on the state it was taken after rebuilds
        the table slot for slot."""
        used = self.index.slot_ids().size
        dirty = self._s.take_dirty(used)
        ids = self.index.slot_ids()[dirty]
        slots = dirty[ids >= 0]
        tensors = {f"rows.{k}": v for k, v in self._s.rows(slots).items()}
        tensors.update(
            {
                "slots": torch.from_numpy(slots),
                "ids": torch.from_numpy(ids[ids >= 0]),
                "age": torch.from_numpy(self._s.age[:used].copy()),
                "free": torch.from_numpy(self.index.free_slots()),
            }
        )
        tensors.update(
            {f"admission.{k}": torch.from_numpy(v) for k, v in self.admission.state().items()}
        )
        return tensors, self._scalars(self._s.opt.scalars())

    def load_delta(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
        """Applies what `delta` took on top of the state it was taken after; InvalidArgument,
        changing nothing, if it does not fit that state."""
        try:
            held = (tensors[k].numpy() for k in ("slots", "ids", "free"))
            index = self.index.changed(tensors["age"].shape[0], *held)
            used, slots = index.slots_in_use, tensors["slots"].numpy()
            self._s.check_rows(slots.size, _part(tensors, "rows"))
            age = tensors["age"]
            if age.dtype != torch.uint8 or tuple(age.shape) != (used,):
                raise ValueError(f"age is {age.dtype} {tuple(age.shape)} for {used} slots")
            grown = self._s.grown(used, self.index.slots_in_use)  # may raise: nothing changed
            self._restore(index, tensors, scalars)
        except (KeyError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"table {self.spec.name!r}: a bad delta: {e}") from None
        self._s = grown
        self._s.write_rows(slots, _part(tensors, "rows"))
        self._s.load_ages(age.numpy())
        self._s.opt.load_scalars({k[4:]: v for k, v in scalars.items() if k[:4] == "opt."})
        self._s.take_dirty(used)
        self.index = index

    def nbytes(self) -> int:
        """The memory in use: the slots handed out (the rest of the reservation is not
        resident), the index and the admission counts."""
        slots = self._s.nbytes(self.index.slots_in_use)
        return slots + self.index.nbytes() + self.admission.nbytes()

    def hot(self, k: int) -> tuple[list[int], list[int]]:
        """The ``k`` most often updated ids held here and their update counts."""
        ids = self.index.slot_ids()
        counts = torch.from_numpy(self._s.update_count[: ids.size].astype(np.int64))
        counts[torch.from_numpy(ids < 0)] = 0
        k = min(k, counts.numel())
        if k == 0:
            return [], []
        top, slots = torch.topk(counts, k)
        keep = top > 0
        return [int(i) for i in ids[slots[keep].numpy()]], top[keep].tolist()
