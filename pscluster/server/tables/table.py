"""One embedding table's rows on one shard, with their optimizer state: plain tensors.

A fixed-size table (``nn.Embedding(num, dim, sparse=True)``) holds its ``local_rows`` rows in
one float32 array, row ``id // shards`` for id ``id``: no per-row objects, no index to keep,
and memory is exactly the values plus the optimizer's state. Every id a caller gives is
checked before anything is read or changed, so a bad id changes nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from pscluster.errors import InvalidArgument, ResourceExhausted
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.optimizers import make_row_optimizer
from pscluster.server.tables.spec import TableSpec, refuse_ids

# Rows initialised per generator: each block of local rows has its own seed, so any block can
# be made again on its own (and the work is in large vectorised draws).
INIT_BLOCK = 1 << 16


class FixedTable:
    """``initial``: this shard's rows in id order (None: N(0, 1) drawn from seeded blocks, the
    initialisation torch gives nn.Embedding, though not the same draws)."""

    def __init__(
        self, spec: TableSpec, optimizer: SparseOptimizerSpec, initial: torch.Tensor | None
    ) -> None:
        self.spec = spec
        shape = (spec.local_rows, spec.dim)
        try:
            self.values = torch.empty(shape, dtype=torch.float32)
            self.opt = make_row_optimizer(optimizer, spec.local_rows, spec.dim)
        except (MemoryError, RuntimeError):
            raise ResourceExhausted(
                f"table {spec.name!r}: this shard cannot hold {spec.local_rows} rows of "
                f"{spec.dim} values and their optimizer state; spread the job over more shards"
            ) from None
        if initial is None:
            self._draw_initial()
        else:
            self.values.copy_(initial.reshape(shape))
        # Updates per row: the hot ids in the stats (4 bytes a row).
        self.update_count = torch.zeros(spec.local_rows, dtype=torch.int32)
        # Rows changed since the last checkpoint: an incremental one writes only those.
        self.dirty = torch.zeros(spec.local_rows, dtype=torch.bool)
        self._pad_slot = self._padding_slot()
        if self._pad_slot is not None:
            self.values[self._pad_slot] = 0.0

    def _draw_initial(self) -> None:
        spec = self.spec
        for start in range(0, spec.local_rows, INIT_BLOCK):
            block = self.values[start : start + INIT_BLOCK]
            seed = np.random.SeedSequence(
                [spec.init_seed, spec.shards, spec.shard_index, start // INIT_BLOCK]
            ).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
            torch.randn(block.shape, generator=generator, out=block)

    def _padding_slot(self) -> int | None:
        pad, spec = self.spec.padding_idx, self.spec
        if pad is None or pad % spec.shards != spec.shard_index:
            return None
        return pad // spec.shards

    # --- reading and updating ---

    def slots(self, ids: torch.Tensor) -> torch.Tensor:
        """The local rows of ``ids`` (int64); InvalidArgument naming the first id this shard
        does not own, before anything is read or changed."""
        spec = self.spec
        if ids.numel() == 0:
            return ids
        owner = torch.remainder(ids, spec.shards)
        bad = (ids < 0) | (ids >= spec.num_rows) | (owner != spec.shard_index)

        def why(first: int) -> str:
            if first < 0 or first >= spec.num_rows:
                return f"outside the table (0 .. {spec.num_rows - 1})"
            return f"owned by shard {first % spec.shards} of {spec.shards}, not this one"

        refuse_ids(spec, ids, bad, why)
        return torch.div(ids, spec.shards, rounding_mode="floor")

    def lookup(self, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        """A copy of the rows of ``ids`` (in their order, repeats included). Reading a fixed
        table changes nothing, so a ``peek`` reads the same."""
        return self.values.index_select(0, self.slots(ids))

    def check_gradient(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """InvalidArgument unless ``grads`` is one row of the table's width per id of ours."""
        if grads.shape != (ids.numel(), self.spec.dim):
            raise InvalidArgument(
                f"table {self.spec.name!r}: a gradient of shape {tuple(grads.shape)} for "
                f"{ids.numel()} ids; expected ({ids.numel()}, {self.spec.dim})"
            )
        self.slots(ids)

    def apply(self, ids: torch.Tensor, grads: torch.Tensor) -> int:
        """One optimizer step on the rows of ``ids`` (checked with :meth:`check_gradient`;
        repeated ids are summed first, as torch coalesces a sparse gradient). The padding row
        never moves. Returns the rows stepped."""
        slots = self.slots(ids)
        unique, inverse = torch.unique(slots, return_inverse=True)
        summed = torch.zeros((unique.numel(), self.spec.dim), dtype=torch.float32)
        grads = summed.index_add_(0, inverse, grads)
        if self._pad_slot is not None:
            keep = unique != self._pad_slot
            unique, grads = unique[keep], grads[keep]
        if unique.numel():
            self.opt.step(self.values, unique, grads)
            self.update_count.index_add_(0, unique, torch.ones_like(unique, dtype=torch.int32))
            self.dirty[unique] = True
        return int(unique.numel())

    @property
    def rows(self) -> int:
        return self.spec.local_rows

    def hot(self, k: int) -> tuple[list[int], list[int]]:
        """The ``k`` most often updated ids of this shard and their update counts."""
        k = min(k, self.update_count.numel())
        if k == 0:
            return [], []
        counts, slots = torch.topk(self.update_count, k)
        keep = counts > 0
        ids = slots[keep] * self.spec.shards + self.spec.shard_index
        return ids.tolist(), counts[keep].tolist()

    # --- checkpoints ---

    def state(self, copy: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The rows and the optimizer state (copies, unless ``copy`` is False: a new job's
        first checkpoint, which nothing can change meanwhile), and the optimizer's scalars."""
        held = {"values": self.values, "update_count": self.update_count}
        held.update({f"opt.{k}": v for k, v in self.opt.state().items()})
        tensors = {k: v.clone() for k, v in held.items()} if copy else held
        return tensors, self.opt.scalars()

    def delta(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The rows changed since the last :meth:`delta` or :meth:`mark_clean` (their slots,
        values, counts and optimizer state), and the optimizer's scalars: an incremental
        checkpoint. The rows count as clean afterwards."""
        slots = self.dirty.nonzero().reshape(-1)
        tensors = {
            "slots": slots,
            "values": self.values.index_select(0, slots),
            "update_count": self.update_count.index_select(0, slots),
        }
        opt = self.opt.state()
        tensors.update({f"opt.{k}": v.index_select(0, slots) for k, v in opt.items()})
        self.mark_clean()
        return tensors, self.opt.scalars()

    def mark_clean(self) -> None:
        self.dirty.zero_()

    def load_delta(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
        """Apply what :meth:`delta` captured on top of the state it was captured after."""
        slots = tensors["slots"]
        self.values.index_copy_(0, slots, tensors["values"])
        self.update_count.index_copy_(0, slots, tensors["update_count"])
        for name, held in self.opt.state().items():  # the optimizer's own tensors
            held.index_copy_(0, slots, tensors[f"opt.{name}"])
        self.opt.load_scalars(scalars)

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
        self.values.copy_(tensors["values"])
        if "update_count" in tensors:
            self.update_count.copy_(tensors["update_count"])
        opt = {k[len("opt.") :]: v for k, v in tensors.items() if k.startswith("opt.")}
        self.opt.load(opt, scalars)

    def nbytes(self) -> int:
        held = [self.values, self.update_count, self.dirty, *self.opt.state().values()]
        return sum(t.numel() * t.element_size() for t in held)
