"""A job's embedding tables in its metrics: each table's rows, traffic and hot ids, summed
over the shards that hold its rows (and how evenly they hold them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pscluster.v1 import common_pb2

_COUNTED = (
    "rows",
    "bytes",
    "lookups",
    "rows_looked_up",
    "bytes_looked_up",
    "rows_pushed",
    "bytes_pushed",
    "admitted",
    "evicted",
    "dropped",
)


@dataclass(frozen=True)
class TableRow:
    """One table over all its shards. ``hot_ids`` are (id, updates), most updated first."""

    name: str
    rows: int = 0  # rows held (a dynamic table: rows admitted and not evicted)
    bytes: int = 0  # memory of rows, optimizer state and index on the shards
    lookups: int = 0
    rows_looked_up: int = 0
    bytes_looked_up: int = 0
    rows_pushed: int = 0
    bytes_pushed: int = 0
    admitted: int = 0
    evicted: int = 0
    dropped: int = 0
    rows_per_shard: list[int] = field(default_factory=list)
    hot_ids: list[tuple[int, int]] = field(default_factory=list)

    @property
    def imbalance(self) -> float:
        """The fullest shard's rows over the mean (1.0: perfectly even)."""
        if not self.rows_per_shard or self.rows == 0:
            return 1.0
        return max(self.rows_per_shard) * len(self.rows_per_shard) / self.rows


def table_rows(shards: Sequence[common_pb2.ShardJobStats], hot: int = 10) -> list[TableRow]:
    """Each table's stats summed over ``shards`` (a job's GetJobStats replies)."""
    names: list[str] = []
    sums: dict[str, dict[str, int]] = {}
    per_shard: dict[str, list[int]] = {}
    hottest: dict[str, list[tuple[int, int]]] = {}
    for s in shards:
        for t in s.tables:
            if t.name not in sums:
                names.append(t.name)
                sums[t.name] = dict.fromkeys(_COUNTED, 0)
                per_shard[t.name], hottest[t.name] = [], []
            for key in _COUNTED:
                sums[t.name][key] += getattr(t, key)
            per_shard[t.name].append(t.rows)
            hottest[t.name].extend(zip(t.hot_ids, t.hot_counts, strict=True))
    return [
        TableRow(
            name,
            **sums[name],
            rows_per_shard=per_shard[name],
            hot_ids=sorted(hottest[name], key=lambda pair: (-pair[1], pair[0]))[:hot],
        )
        for name in names
    ]
