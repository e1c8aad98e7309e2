"""A job's table rows dealt out again over a new number of shards, shard to shard.

A row, its optimizer state (adagrad accumulators, lazy Adam moments) and its bookkeeping
(update count; a dynamic row's age) belong to its id, so each moves whole to the shard that
owns the id in the new layout: ``id % shards`` for a fixed table, the hash owner for a dynamic
one (:func:`pscluster.model.partition.rows_partitioner`), with a dynamic table's ids still
being counted for admission going the same way. Each old shard picks out what goes to one new
shard (:func:`outgoing`: the rows with their ids), and the new shard puts what every old shard
sent it together (:func:`incoming`), so the rows travel once, from where they are to where
they go, and never through the coordinator, which carries only what a table holds as a whole
(optimizer step counts, apply counts: :mod:`pscluster.coordinator.recut_tables`).

Pure: tensors in, tensors out. The tensors are named as a job's state names them, ``"<table
index>.<name>"`` without the state's ``"tables."`` prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pscluster.errors import FailedPrecondition
from pscluster.model.partition import rows_partitioner
from pscluster.server.tables.spec import TableSpec

Tensors = dict[str, torch.Tensor]
# What a table holds per row on the way: its ids, and each per-row tensor.
_IDS, _ROW = "rows.ids", "rows."
_INDEX, _ADMISSION = "index.", "admission."


def outgoing(
    tables: Mapping[str, torch.Tensor], specs: Sequence[TableSpec], shards: int, index: int
) -> Tensors:
    """The rows of this old shard's ``tables`` (held under ``specs``) that new shard
    ``index`` of ``shards`` owns, with their ids, table by table."""
    out: Tensors = {}
    for table, spec in enumerate(specs):
        own = _prefixed(tables, f"{table}.")
        if spec.dynamic:
            rows = _dynamic_rows(own, shards, index)
        else:
            rows = _fixed_rows(spec, own, shards, index)
        out.update({f"{table}.{name}": t for name, t in rows.items()})
    return out


def incoming(parts: Sequence[Mapping[str, torch.Tensor]], specs: Sequence[TableSpec]) -> Tensors:
    """This new shard's tables (held under ``specs``) from what each old shard sent it
    (:func:`outgoing`, in the old shards' plan order); FailedPrecondition, naming the table,
    if the rows sent do not make it up exactly."""
    out: Tensors = {}
    for table, spec in enumerate(specs):
        sent = [_prefixed(part, f"{table}.") for part in parts]
        names = sorted(sent[0]) if sent else []
        odd = [sorted(s) for s in sent if sorted(s) != names]
        if not sent or odd or _IDS not in names:
            raise FailedPrecondition(
                f"table {spec.name!r}: the old shards sent rows of differing or missing tensors "
                f"({names} and {odd})"
            )
        held = _dynamic_table(spec, sent) if spec.dynamic else _fixed_table(spec, sent)
        out.update({f"{table}.{name}": t for name, t in held.items()})
    return out


def _fixed_rows(spec: TableSpec, own: Tensors, shards: int, index: int) -> Tensors:
    """Row ``s`` here is id ``s * spec.shards + spec.shard_index``."""
    bad = {n: tuple(t.shape) for n, t in own.items() if t.shape[:1] != (spec.local_rows,)}
    if bad:
        raise FailedPrecondition(
            f"table {spec.name!r}: this shard's tensors {bad} are not one row each of its "
            f"{spec.local_rows}"
        )
    ids = torch.arange(spec.local_rows, dtype=torch.int64) * spec.shards + spec.shard_index
    mine = rows_partitioner(False).owner(ids, shards) == index
    out = {_ROW + name: t[mine] for name, t in own.items()}
    out[_IDS] = ids[mine]
    return out


def _dynamic_rows(own: Tensors, shards: int, index: int) -> Tensors:
    """Live rows by the index's ids (each row's tensors at its slot), in slot order, and the
    admission counts of ids not admitted yet."""
    owner = rows_partitioner(True)
    ids, slots = own[f"{_INDEX}ids"], own[f"{_INDEX}slots"]
    mine = owner.owner(ids, shards) == index
    out = {
        _ROW + name: t[slots[mine]]
        for name, t in own.items()
        if not name.startswith((_INDEX, _ADMISSION))
    }
    out[_IDS] = ids[mine]
    counted = owner.owner(own[f"{_ADMISSION}ids"], shards) == index
    for name in ("ids", "counts"):
        out[f"{_ADMISSION}{name}"] = own[f"{_ADMISSION}{name}"][counted]
    return out


def _fixed_table(spec: TableSpec, sent: Sequence[Tensors]) -> Tensors:
    """Every row this shard owns, each exactly once, at ``id // spec.shards``."""
    ids = torch.cat([s[_IDS] for s in sent])
    slots = torch.div(ids - spec.shard_index, spec.shards, rounding_mode="floor")
    owned = bool((torch.remainder(ids, spec.shards) == spec.shard_index).all())
    covered = torch.zeros(spec.local_rows, dtype=torch.int64)
    if owned and bool(((slots >= 0) & (slots < spec.local_rows)).all()):
        covered.index_add_(0, slots, torch.ones_like(slots))
    if not owned or not bool((covered == 1).all()):
        raise FailedPrecondition(
            f"table {spec.name!r}: the old shards sent {ids.numel()} rows that are not each of "
            f"this shard's {spec.local_rows} ids (share {spec.shard_index} of {spec.shards}) "
            "exactly once"
        )
    out: Tensors = {}
    for name in sent[0]:
        if name == _IDS:
            continue
        rows = torch.cat([s[name] for s in sent])
        held = torch.empty((spec.local_rows, *rows.shape[1:]), dtype=rows.dtype)
        held[slots] = rows
        out[name.removeprefix(_ROW)] = held
    return out


def _dynamic_table(spec: TableSpec, sent: Sequence[Tensors]) -> Tensors:
    """The live rows in dense slots, in the order sent (freed slots are not carried), and
    the admission counts."""
    ids = torch.cat([s[_IDS] for s in sent])
    if spec.capacity and ids.numel() > spec.capacity:
        raise FailedPrecondition(
            f"table {spec.name!r}: this shard would hold {ids.numel()} rows, over its capacity "
            f"of {spec.capacity}; it would evict rows the job keeps where it is"
        )
    out: Tensors = {
        name.removeprefix(_ROW): torch.cat([s[name] for s in sent])
        for name in sent[0]
        if name.startswith(_ROW) and name != _IDS
    }
    n = ids.numel()
    out[f"{_INDEX}ids"] = ids
    out[f"{_INDEX}slots"] = torch.arange(n, dtype=torch.int64)
    out[f"{_INDEX}free"] = torch.zeros(0, dtype=torch.int64)
    out[f"{_INDEX}slots_in_use"] = torch.tensor([n], dtype=torch.int64)
    for name in ("ids", "counts"):
        out[f"{_ADMISSION}{name}"] = torch.cat([s[f"{_ADMISSION}{name}"] for s in sent])
    return out


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> Tensors:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
