"""A job's embedding tables on one shard: lookups, row updates, counters and checkpoints.

Not thread-safe: the job calls it under its lock, so that a lookup never sees half of an
update and a row update is applied with the dense step it came with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pscluster.errors import InvalidArgument
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.rows import RowGrads
from pscluster.server.tables.spec import TableSpec
from pscluster.server.tables.table import FixedTable


@dataclass
class TableCounters:
    rows_looked_up: int = 0
    rows_pushed: int = 0  # rows stepped by the optimizer
    lookups: int = 0
    bytes_looked_up: int = 0
    per_table_rows_pushed: dict[str, int] = field(default_factory=dict)


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
            FixedTable(spec, optimizer, rows) for spec, rows in zip(specs, initial, strict=True)
        ]
        self.counters = TableCounters()

    def __len__(self) -> int:
        return len(self.tables)

    @property
    def dims(self) -> list[int]:
        return [spec.dim for spec in self.specs]

    def lookup(self, table: int, ids: torch.Tensor) -> torch.Tensor:
        rows = self._table(table).lookup(ids)
        self.counters.lookups += 1
        self.counters.rows_looked_up += ids.numel()
        return rows

    def check(self, rows: RowGrads) -> None:
        """InvalidArgument for a block this shard cannot apply (a table it does not have, an
        id it does not own, a width that is not the table's): nothing is applied then."""
        for table, (ids, grads) in rows.blocks.items():
            self._table(table).check_gradient(ids, grads)

    def apply(self, rows: RowGrads) -> None:
        """Step every block (checked with :meth:`check` when it came in)."""
        for table, (ids, grads) in rows.blocks.items():
            stepped = self.tables[table].apply(ids, grads)
            self.counters.rows_pushed += stepped
            name = self.specs[table].name
            per = self.counters.per_table_rows_pushed
            per[name] = per.get(name, 0) + stepped

    def _table(self, table: int) -> FixedTable:
        if not 0 <= table < len(self.tables):
            raise InvalidArgument(f"table {table} does not exist; the job has {len(self.tables)}")
        return self.tables[table]

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.tables)

    # --- checkpoints ---

    def state_dict(self) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
        """Every table's tensors as ``"<index>.<name>"`` and its optimizer scalars, in order."""
        tensors: dict[str, torch.Tensor] = {}
        scalars: list[dict[str, float]] = []
        for i, table in enumerate(self.tables):
            held, numbers = table.state()
            tensors.update({f"{i}.{k}": v for k, v in held.items()})
            scalars.append(numbers)
        return tensors, scalars

    def load_state_dict(self, tensors: dict[str, torch.Tensor], scalars: list[Any]) -> None:
        for i, table in enumerate(self.tables):
            prefix = f"{i}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            table.load(own, dict(scalars[i]))
