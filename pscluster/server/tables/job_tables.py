"""A job's embedding tables on one shard: lookups, row updates, counters and checkpoints.

Not thread-safe: the job calls it under its lock, so that a lookup never sees half of an
update and a row update is applied with the dense step it came with.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.dynamic import DynamicTable
from pscluster.server.tables.rows import RowGrads
from pscluster.server.tables.spec import TableSpec
from pscluster.server.tables.table import FixedTable

HOT_IDS = 10
# Finding the hot ids reads every row's count: done at most this often per table.
HOT_REFRESH_SECONDS = 5.0


@dataclass
class TableStats:
    """Field names match ``common_pb2.TableStats``."""

    name: str
    rows: int = 0
    bytes: int = 0
    lookups: int = 0
    rows_looked_up: int = 0
    bytes_looked_up: int = 0
    rows_pushed: int = 0
    bytes_pushed: int = 0
    admitted: int = 0
    evicted: int = 0
    dropped: int = 0
    hot_ids: list[int] = field(default_factory=list)
    hot_counts: list[int] = field(default_factory=list)


Table = FixedTable | DynamicTable


def _make(spec: TableSpec, optimizer: SparseOptimizerSpec, initial: torch.Tensor | None) -> Table:
    if spec.dynamic:
        return DynamicTable(spec, optimizer)
    return FixedTable(spec, optimizer, initial)


def _dynamic_counts(table: Table) -> dict[str, int]:
    if not isinstance(table, DynamicTable):
        return {}
    return {"admitted": table.admitted, "evicted": table.evicted, "dropped": table.dropped_rows}


class JobTables:
    """``initial``: per table, its rows on this shard (None: drawn from its seed)."""

    def __init__(
        self,
        specs: Sequence[TableSpec],
        optimizer: SparseOptimizerSpec,
        initial: Sequence[torch.Tensor | None],
    ) -> None:
        self.specs = tuple(specs)
        self.tables = [
            _make(spec, optimizer, rows) for spec, rows in zip(specs, initial, strict=True)
        ]
        self.counters = [TableStats(spec.name) for spec in specs]
        self._hot: list[tuple[float, list[int], list[int]]] = [(-1e9, [], [])] * len(specs)

    def __len__(self) -> int:
        return len(self.tables)

    @property
    def dims(self) -> list[int]:
        return [spec.dim for spec in self.specs]

    def lookup(
        self, table: int, ids: torch.Tensor, *, peek: bool = False, itemsize: int = 4
    ) -> torch.Tensor:
        """Rows of ``ids``, to be sent ``itemsize`` bytes a value; a ``peek`` (an observer's
        read) admits nothing into a dynamic table and is not counted as traffic."""
        rows = self._table(table).lookup(ids, peek=peek)
        if peek:
            return rows
        counters = self.counters[table]
        counters.lookups += 1
        counters.rows_looked_up += ids.numel()
        counters.bytes_looked_up += rows.numel() * itemsize
        return rows

    def take_admitted(self, table: int) -> np.ndarray:
        """Ids the last lookups admitted into a dynamic table (to log); empty otherwise."""
        held = self._table(table)
        if isinstance(held, DynamicTable):
            return held.take_admitted()
        return np.zeros(0, dtype=np.int64)

    def admit(self, table: int, ids: np.ndarray) -> None:
        """Recovery: create the rows of ``ids`` in a dynamic table, as a lookup did."""
        held = self._table(table)
        if not isinstance(held, DynamicTable):
            raise InvalidArgument(f"table {table} is not dynamic: it admits nothing")
        held.admit(ids)
        held.take_admitted()  # already in the log

    def export(self, table: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, rows) of every row of a table this shard holds (copies)."""
        held = self._table(table)
        if isinstance(held, DynamicTable):
            present = torch.from_numpy(held.index.items()[0].astype(np.int64))
            return present, held.lookup(present)
        spec = held.spec
        ids = torch.arange(spec.local_rows, dtype=torch.int64) * spec.shards + spec.shard_index
        return ids, held.values.clone()

    def check(self, rows: RowGrads) -> None:
        """InvalidArgument for a block this shard cannot apply (a table it does not have, an
        id it does not own, a width that is not the table's): nothing is applied then."""
        for table, (ids, grads) in rows.blocks.items():
            self._table(table).check_gradient(ids, grads)

    def received(self, rows: RowGrads, wire_bytes: Sequence[int]) -> None:
        """Count the bytes of a push's row blocks (``wire_bytes`` per block, header order)."""
        for table, nbytes in zip(rows.blocks, wire_bytes, strict=True):
            self.counters[table].bytes_pushed += nbytes

    def apply(self, rows: RowGrads) -> None:
        """Step every block (checked with :meth:`check` when it came in)."""
        for table, (ids, grads) in rows.blocks.items():
            self.counters[table].rows_pushed += self.tables[table].apply(ids, grads)

    def _table(self, table: int) -> Table:
        if not 0 <= table < len(self.tables):
            raise InvalidArgument(f"table {table} does not exist; the job has {len(self.tables)}")
        return self.tables[table]

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.tables)

    def stats(self) -> list[TableStats]:
        out = []
        for i, (table, counters) in enumerate(zip(self.tables, self.counters, strict=True)):
            when, ids, counts = self._hot[i]
            if time.monotonic() - when > HOT_REFRESH_SECONDS:
                ids, counts = table.hot(HOT_IDS)
                self._hot[i] = (time.monotonic(), ids, counts)
            out.append(
                TableStats(
                    **{
                        **counters.__dict__,
                        "rows": table.rows,
                        "bytes": table.nbytes(),
                        **_dynamic_counts(table),
                        "hot_ids": ids,
                        "hot_counts": counts,
                    }
                )
            )
        return out

    # --- checkpoints ---

    def state_dict(
        self, checkpoint: str = "", *, copy: bool = True
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
        """Every table's tensors as ``"<index>.<name>"`` and its optimizer scalars, in order.

        ``checkpoint`` "full" or "delta" is a checkpoint's read: every row is clean after it,
        and a "delta" holds each table's changed rows only (``"<index>.delta.<name>"``; a
        dynamic table's with the ids its slots hold). "" (any other read, a test's) changes
        nothing.
        """
        tensors: dict[str, torch.Tensor] = {}
        scalars: list[dict[str, float]] = []
        for i, table in enumerate(self.tables):
            if checkpoint == "delta":
                held, numbers = table.delta()
                tensors.update({f"{i}.delta.{k}": v for k, v in held.items()})
            else:
                held, numbers = (
                    table.state(copy) if isinstance(table, FixedTable) else table.state()
                )
                tensors.update({f"{i}.{k}": v for k, v in held.items()})
                if checkpoint:
                    table.mark_clean()
            scalars.append(numbers)
        return tensors, scalars

    def load_state_dict(self, tensors: dict[str, torch.Tensor], scalars: list[Any]) -> None:
        """Become what :meth:`state_dict` described; a delta is applied on top of the state
        it was taken after (recovery loads its base first)."""
        for i, table in enumerate(self.tables):
            delta = f"{i}.delta."
            own = _prefixed(tensors, delta)
            if own:
                table.load_delta(own, dict(scalars[i]))
            else:
                table.load(_prefixed(tensors, f"{i}."), dict(scalars[i]))


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
