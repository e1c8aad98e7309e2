"""What a job's embedding tables hold as a whole, dealt out again over new shards
(:mod:`pscluster.coordinator.recut`).

The rows, their optimizer state and their bookkeeping belong to their ids and go shard to
shard, each to the new shard that owns its id (:mod:`pscluster.server.tables.moving_rows`);
the coordinator never holds them. What a shard keeps for a table as a whole cannot be split by
id: lazy Adam's step count and a dynamic table's apply count (the clock its rows age by) are
carried where the old shards agree on them; where they differ, no value is right for the rows
brought together on one new shard, and the table cannot be moved. A dynamic table's counts of
admitted, evicted and dropped rows go with the old shard's other counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pscluster.server.tables.spec import TableSpec

# A dynamic table's counters of admitted, evicted and dropped rows: per shard, summed by
# whoever reports them, so they move with the old shard's other counters.
_DYNAMIC_COUNTS = ("admitted", "evicted", "dropped_rows")


def check_table_specs(old: Sequence[TableSpec], new: Sequence[TableSpec]) -> None:
    """ValueError unless every spec describes the same table (all but its shard share, and
    whether its initial rows were given: they are state by now) and the old ones its old
    shards in order."""
    for index, spec in enumerate(old):
        if (spec.shards, spec.shard_index) != (len(old), index):
            raise ValueError(
                f"table {spec.name!r}: old shard {index} holds share {spec.shard_index} of "
                f"{spec.shards}; the old states must be its {len(old)} shards in plan order"
            )
    for index, spec in enumerate(new):
        if (spec.shards, spec.shard_index) != (len(new), index):
            raise ValueError(
                f"table {spec.name!r}: new config {index} is share {spec.shard_index} of "
                f"{spec.shards}; expected {index} of {len(new)}"
            )
    plain = {replace(s, shards=1, shard_index=0, initial_given=False) for s in (*old, *new)}
    if len(plain) != 1:
        raise ValueError(f"the table configs describe different tables: {sorted(map(str, plain))}")


def recut_table(
    scalars: Sequence[dict[str, float]],
    old: Sequence[TableSpec],
    new: Sequence[TableSpec],
    homes: Sequence[int],
) -> list[dict[str, float]]:
    """One table's whole-table numbers per new shard, from its numbers per old shard (plan
    order); ``homes`` maps each old shard to the new one that takes over its counters. The
    rows themselves go shard to shard (:mod:`pscluster.server.tables.moving_rows`)."""
    check_table_specs(old, new)
    if old[0].dynamic:
        return _dynamic(scalars, old, new, homes)
    common = _optimizer_scalars(old[0], scalars, "")
    return [dict(common) for _ in new]


def _agreed(spec: TableSpec, what: str, values: Sequence[float]) -> float:
    """The value every old shard has; ValueError naming the table otherwise."""
    if any(v != values[0] for v in values):
        raise ValueError(
            f"table {spec.name!r}: its shards' {what} differ ({list(values)}); rows brought "
            "together on one new shard would share one, so the table cannot be moved exactly"
        )
    return values[0]


def _optimizer_scalars(
    spec: TableSpec, scalars: Sequence[dict[str, float]], prefix: str
) -> dict[str, float]:
    """The row optimizer's whole-table scalars (lazy Adam's step count), agreed by all."""
    names = sorted({k for s in scalars for k in s if k.startswith(prefix)})
    return {
        name: _agreed(
            spec,
            f"optimizer {name!r} (lazy_adam's step count: its bias correction)",
            [float(s[name]) if name in s else float("nan") for s in scalars],
        )
        for name in names
    }


def _dynamic(
    scalars: Sequence[dict[str, float]],
    old: Sequence[TableSpec],
    new: Sequence[TableSpec],
    homes: Sequence[int],
) -> list[dict[str, float]]:
    """The agreed numbers on every new shard, and each old shard's counts of admitted,
    evicted and dropped rows on the new shard that takes over its counters."""
    common = _dynamic_scalars(old[0], scalars)
    out = []
    for index in range(len(new)):
        moved = [s for s, home in zip(scalars, homes, strict=True) if home == index]
        numbers = {k: float(sum(float(s[k]) for s in moved)) for k in _DYNAMIC_COUNTS}
        out.append({**common, **numbers})
    return out


def _dynamic_scalars(spec: TableSpec, scalars: Sequence[dict[str, float]]) -> dict[str, float]:
    """The whole-table numbers every new shard starts with: the row optimizer's, and the
    apply count. Rows age by the apply count of their shard, so only an agreed count keeps
    their ages meaning the same on the new shard; a table without eviction keeps no ages."""
    common = _optimizer_scalars(spec, scalars, "opt.")
    updates = [float(s["updates"]) for s in scalars]
    if spec.evict_after > 0 or spec.capacity > 0:
        common["updates"] = _agreed(spec, "apply counts (the clock rows age by)", updates)
    else:
        common["updates"] = max(updates)
    return common
