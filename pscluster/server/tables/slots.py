"""A dynamic table's per-slot arrays: each row's values, optimizer state, age, update count
and a dirty bit, reserved far beyond the rows held and taken page by page (see `lazy`).

A slot is a row of every array; `IdIndex` says which id a slot holds. The arrays are
replaced whole (`grown`, `from_state`), so a failed growth or load leaves a table as it was.
Dirty bits (one per slot, packed: an eighth of a byte a row) mark the rows an incremental
checkpoint must write.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from pscluster.errors import ResourceExhausted
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.lazy import lazy_zeros, reservation
from pscluster.server.tables.optimizers import make_row_optimizer
from pscluster.server.tables.spec import TableSpec

I64 = npt.NDArray[np.int64]
COUNT_MAX = np.iinfo(np.int32).max  # update counts saturate rather than wrap


class SlotArrays:
    """`size` slots of a table of `spec.dim` values under `optimizer`'s rule."""

    def __init__(self, spec: TableSpec, optimizer: SparseOptimizerSpec, size: int) -> None:
        self.spec, self._optimizer, dim = spec, optimizer, spec.dim
        try:
            self.values = torch.from_numpy(lazy_zeros((size, dim), np.float32))
            self.opt = make_row_optimizer(optimizer, size, dim, lazy=True)
            self.age = lazy_zeros((size,), np.uint8)  # ticks since the last update: `eviction`
            self.update_count = lazy_zeros((size,), np.int32)
            self._dirty = lazy_zeros(((size + 7) // 8,), np.uint8)
        except MemoryError:
            raise ResourceExhausted(
                f"table {spec.name!r}: this shard cannot map {size} rows of {dim} values and "
                "their optimizer state; lower its capacity or spread the job over more shards"
            ) from None
        self._fresh = make_row_optimizer(optimizer, 1, dim).state()  # a new row's state
        # Ages serve eviction alone: a table without it never writes them, so their pages
        # are never taken (a byte a row saved).
        self._ages = spec.evict_after > 0 or spec.capacity > 0

    @property
    def size(self) -> int:
        return int(self.values.shape[0])

    def grown(self, needed: int, used: int) -> SlotArrays:
        """These arrays if they hold `needed` slots, else a larger reservation holding a copy
        of the first `used` (and the optimizer's scalars: lazy_adam's step count)."""
        size = reservation(needed, self.size)
        if size == self.size:
            return self
        new = SlotArrays(self.spec, self._optimizer, size)
        new.values[:used] = self.values[:used]
        theirs = self.opt.state()
        for name, tensor in new.opt.state().items():
            tensor[:used] = theirs[name][:used]
        new.opt.load_scalars(self.opt.scalars())
        if self._ages:
            new.age[:used] = self.age[:used]
        new.update_count[:used] = self.update_count[:used]
        bytes_used = (used + 7) // 8
        new._dirty[:bytes_used] = self._dirty[:bytes_used]
        return new

    # --- rows ---

    def fresh(self, slots: I64, values: torch.Tensor) -> None:
        """New rows in `slots` (which may have held evicted ones): `values`, a new optimizer
        state, the age and count of a row just made; dirty."""
        at = torch.from_numpy(slots)
        self.values[at] = values
        for name, tensor in self.opt.state().items():  # the row optimizers lend, not copy
            tensor[at] = self._fresh[name]
        if self._ages:
            self.age[slots] = 0
        self.update_count[slots] = 0
        self._mark(slots)

    def step(self, unique: torch.Tensor, grads: torch.Tensor) -> None:
        """One optimizer step on the distinct slots `unique` with their summed gradients."""
        self.opt.step(self.values, unique, grads)
        touched = unique.numpy()
        if self._ages:
            self.age[touched] = 0
        counts = self.update_count[touched]
        self.update_count[touched] = counts + (counts < COUNT_MAX)
        self._mark(touched)

    def _mark(self, slots: I64) -> None:
        np.bitwise_or.at(self._dirty, slots >> 3, np.left_shift(1, slots & 7).astype(np.uint8))

    def take_dirty(self, used: int) -> I64:
        """The slots below `used` changed since the last call, ascending; all clean after."""
        n = (used + 7) // 8
        bits = np.unpackbits(self._dirty[:n], bitorder="little")[:used]
        self._dirty[:n] = 0
        return np.flatnonzero(bits).astype(np.int64)

    def rows(self, slots: I64) -> dict[str, torch.Tensor]:
        """Copies of these slots' values, update counts and optimizer state."""
        at = torch.from_numpy(slots)
        out = {
            "values": self.values.index_select(0, at),
            "update_count": torch.from_numpy(self.update_count[slots]),
        }
        out.update({f"opt.{k}": v.index_select(0, at) for k, v in self.opt.state().items()})
        return out

    def check_rows(self, count: int, tensors: dict[str, torch.Tensor]) -> None:
        """ValueError unless `tensors` are what `rows` gives for `count` slots."""
        for name, want in self.rows(np.zeros(0, np.int64)).items():
            got = tensors[name]
            if got.dtype != want.dtype or tuple(got.shape) != (count, *want.shape[1:]):
                raise ValueError(
                    f"{name} is {got.dtype} {tuple(got.shape)}; want {want.dtype} "
                    f"{(count, *want.shape[1:])}"
                )

    def write_rows(self, slots: I64, tensors: dict[str, torch.Tensor]) -> None:
        """Rows that `rows` read (checked with `check_rows`) back into `slots`."""
        at = torch.from_numpy(slots)
        self.values.index_copy_(0, at, tensors["values"])
        self.update_count[slots] = tensors["update_count"].numpy()
        for name, tensor in self.opt.state().items():
            tensor.index_copy_(0, at, tensors[f"opt.{name}"])

    def load_ages(self, ages: npt.NDArray[np.uint8]) -> None:
        """The ages of the first ``ages.size`` slots (a checkpoint's)."""
        if self._ages:
            self.age[: ages.size] = ages

    # --- whole ---

    def state(self, used: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Copies of the first `used` slots' arrays, and the optimizer's scalars."""
        tensors = {
            "values": self.values[:used].clone(),
            "age": torch.from_numpy(self.age[:used].copy()),
            "update_count": torch.from_numpy(self.update_count[:used].copy()),
        }
        tensors.update({f"opt.{k}": v[:used].clone() for k, v in self.opt.state().items()})
        return tensors, self.opt.scalars()

    @classmethod
    def from_state(
        cls,
        spec: TableSpec,
        optimizer: SparseOptimizerSpec,
        used: int,
        tensors: dict[str, torch.Tensor],
        scalars: dict[str, float],
    ) -> SlotArrays:
        """Arrays holding what `state(used)` read; ValueError (or KeyError) if they do not
        fit `used` slots of this table. The rows count as clean."""
        new = cls(spec, optimizer, reservation(used))
        new.check_rows(used, tensors)
        age = tensors["age"]
        if age.dtype != torch.uint8 or tuple(age.shape) != (used,):
            raise ValueError(f"age is {age.dtype} {tuple(age.shape)}; want uint8 ({used},)")
        new.write_rows(np.arange(used, dtype=np.int64), tensors)
        new.load_ages(age.numpy())
        new.opt.load_scalars(scalars)
        return new

    def nbytes(self, used: int) -> int:
        """The memory of the first `used` slots (the rest of a reservation is not resident)."""
        state = self.opt.state().values()
        per_row = 4 * self.spec.dim + sum(t[:1].numel() * t.element_size() for t in state)
        per_row += 4 + (1 if self._ages else 0)  # update count, age
        return used * per_row + (used + 7) // 8  # + a dirty bit
