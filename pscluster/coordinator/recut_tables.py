"""A job's embedding tables dealt out again over new shards (:mod:`pscluster.coordinator.recut`).

A row, its optimizer state (adagrad accumulators, lazy Adam moments) and its bookkeeping
(update count; a dynamic row's age) belong to its id, so each moves whole to the shard that
owns the id in the new layout: ``id % shards`` for a fixed table, the hash owner for a dynamic
one (:func:`pscluster.model.partition.rows_partitioner`), with a dynamic table's ids still
being counted for admission. What a shard keeps for a table as a whole cannot be split by id:
lazy Adam's step count and a dynamic table's apply count (the clock its rows age by) are
carried where the old shards agree on them; where they differ, no value is right for the rows
brought together on one new shard, and the table cannot be moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from pscluster.model.partition import rows_partitioner
from pscluster.server.tables.spec import TableSpec

# One table's state on one shard, as JobTables keeps it: its tensors and its scalars.
TableState = tuple[dict[str, torch.Tensor], dict[str, float]]
# A dynamic table's counters of admitted, evicted and dropped rows: per shard, summed by
# whoever reports them, so they move with the old shard's other counters.
_DYNAMIC_COUNTS = ("admitted", "evicted", "dropped_rows")
_INDEX, _ADMISSION = "index.", "admission."


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
    parts: Sequence[TableState],
    old: Sequence[TableSpec],
    new: Sequence[TableSpec],
    homes: Sequence[int],
) -> list[TableState]:
    """One table's state per new shard, from its state per old shard (plan order); ``homes``
    maps each old shard to the new one that takes over its counters."""
    check_table_specs(old, new)
    if old[0].dynamic:
        return _dynamic(parts, old, new, homes)
    return _fixed(parts, old, new)


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


def _fixed(
    parts: Sequence[TableState], old: Sequence[TableSpec], new: Sequence[TableSpec]
) -> list[TableState]:
    """Rows of id ``i`` sit at ``i // shards`` on shard ``i % shards``: gathered per new
    shard from the old shards that held them."""
    names = sorted(parts[0][0])
    for spec, (tensors, _) in zip(old, parts, strict=True):
        bad = [n for n, t in tensors.items() if t.shape[:1] != (spec.local_rows,)]
        if sorted(tensors) != names or bad:
            raise ValueError(
                f"table {spec.name!r}: shard {spec.shard_index} holds {sorted(tensors)} "
                f"(not one row each of its {spec.local_rows}: {bad}); expected {names}"
            )
    scalars = _optimizer_scalars(old[0], [s for _, s in parts], "")
    out: list[TableState] = []
    for spec in new:
        ids = torch.arange(spec.local_rows, dtype=torch.int64) * spec.shards + spec.shard_index
        owner, slot = (
            torch.remainder(ids, len(old)),
            torch.div(ids, len(old), rounding_mode="floor"),
        )
        tensors = {}
        for name in names:
            like = parts[0][0][name]
            held = torch.empty((ids.numel(), *like.shape[1:]), dtype=like.dtype)
            for index, (theirs, _) in enumerate(parts):
                mine = owner == index
                held[mine] = theirs[name][slot[mine]]
            tensors[name] = held
        out.append((tensors, dict(scalars)))
    return out


def _dynamic(
    parts: Sequence[TableState],
    old: Sequence[TableSpec],
    new: Sequence[TableSpec],
    homes: Sequence[int],
) -> list[TableState]:
    """Live rows (by the index's ids) and admission counts go to their hash owner, each old
    shard's in its slot order, into dense slots; freed slots are not carried."""
    spec, scalars = old[0], [s for _, s in parts]
    common = _dynamic_scalars(spec, scalars)
    owner = rows_partitioner(True)
    rows = [owner.owner(held[f"{_INDEX}ids"], len(new)) for held, _ in parts]
    counts = [owner.owner(held[f"{_ADMISSION}ids"], len(new)) for held, _ in parts]
    slotted = sorted(k for k in parts[0][0] if not k.startswith((_INDEX, _ADMISSION)))
    out: list[TableState] = []
    for index, target in enumerate(new):
        mine = [own == index for own in rows]
        held = {
            name: torch.cat(
                [t[name][t[f"{_INDEX}slots"][m]] for (t, _), m in zip(parts, mine, strict=True)]
            )
            for name in slotted
        }
        ids = torch.cat([t[f"{_INDEX}ids"][m] for (t, _), m in zip(parts, mine, strict=True)])
        if target.capacity and ids.numel() > target.capacity:
            raise ValueError(
                f"table {spec.name!r}: new shard {index} would hold {ids.numel()} rows, over its "
                f"capacity of {target.capacity}; it would evict rows the job keeps where it is"
            )
        held.update(_index(ids))
        for name in ("ids", "counts"):
            held[f"{_ADMISSION}{name}"] = torch.cat(
                [
                    t[f"{_ADMISSION}{name}"][own == index]
                    for (t, _), own in zip(parts, counts, strict=True)
                ]
            )
        moved = [s for s, home in zip(scalars, homes, strict=True) if home == index]
        numbers = {k: float(sum(float(s[k]) for s in moved)) for k in _DYNAMIC_COUNTS}
        out.append((held, {**common, **numbers}))
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


def _index(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """An id index of ``ids`` in slots 0 .. n - 1, none free (IdIndex.state's form)."""
    n = ids.numel()
    return {
        f"{_INDEX}ids": ids,
        f"{_INDEX}slots": torch.arange(n, dtype=torch.int64),
        f"{_INDEX}free": torch.zeros(0, dtype=torch.int64),
        f"{_INDEX}slots_in_use": torch.tensor([n], dtype=torch.int64),
    }
