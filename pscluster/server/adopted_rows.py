"""The rows of an adopted job's embedding tables, gathered by the adopting shard itself.

A move's skeleton carries what each table holds as a whole, never its rows: the adopting
shard reads from every old shard of the job the rows it owns in the new layout (an ExportJob
with ``rows_for``; from its own older copy when it was one of them) and puts them together
(:func:`pscluster.server.tables.moving_rows.incoming`). Each row crosses the network once,
from where it was to where it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.server.durability import dense as dn
from pscluster.server.tables import moving_rows
from pscluster.server.tables.spec import TableSpec

TABLES = "tables."
Tensors = dict[str, torch.Tensor]
# The rows that new shard ``index`` of ``shards`` owns, from the old shard at an address
# (moving_rows.outgoing's tensors): (address, shards, index).
FetchRows = Callable[[str, int, int], Tensors]
# The same from this shard's own older copy of the job: (shards, index).
OwnRows = Callable[[int, int], Tensors]


@dataclass(frozen=True)
class RowSource:
    """An old shard of the job, in plan order; ``local``: this shard itself."""

    address: str
    local: bool = False


def without_rows(tensors: Tensors) -> Tensors:
    """A state's tensors but its tables' (a move's skeleton: the rows go shard to shard)."""
    return {name: t for name, t in tensors.items() if not name.startswith(TABLES)}


def rows_for(tensors: Tensors, specs: Sequence[TableSpec], shards: int, index: int) -> Tensors:
    """The rows of a state's tables (held under ``specs``) that new shard ``index`` of
    ``shards`` owns: :func:`moving_rows.outgoing` of its ``"tables."`` tensors."""
    tables = {k[len(TABLES) :]: v for k, v in tensors.items() if k.startswith(TABLES)}
    return moving_rows.outgoing(tables, specs, shards, index)


def with_rows(
    job_id: str,
    state: dn.State,
    sources: Sequence[RowSource],
    own: OwnRows | None,
    fetch: FetchRows | None,
) -> tuple[dn.State, int]:
    """``state`` with its tables' rows read from ``sources`` where it came without them, and
    the bytes of rows read from other shards; InvalidArgument when the sources do not go with
    the state, FailedPrecondition when a source cannot give its rows or they do not make up
    this shard's tables exactly."""
    tensors, meta = state
    specs = [TableSpec.from_json(t) for t in meta["config"].get("tables", ())]
    carried = any(name.startswith(TABLES) for name in tensors)
    if not specs or carried:
        if sources:
            what = "carries their rows" if carried else "has no embedding tables"
            raise InvalidArgument(
                f"the state adopted for job {job_id} {what}, yet the adoption names "
                f"{len(sources)} shards to read table rows from"
            )
        return state, 0
    if not sources:
        raise InvalidArgument(
            f"the state adopted for job {job_id} holds {len(specs)} tables without "
            "their rows and names no shards to read them from (AdoptJobHeader.table_sources)"
        )
    shards, index = specs[0].shards, specs[0].shard_index
    parts = [_rows_from(job_id, source, shards, index, own, fetch) for source in sources]
    rows = moving_rows.incoming(parts, specs)
    read = sum(
        t.numel() * t.element_size()
        for part, source in zip(parts, sources, strict=True)
        if not source.local
        for t in part.values()
    )
    return ({**tensors, **{TABLES + name: t for name, t in rows.items()}}, meta), read


def _rows_from(
    job_id: str,
    source: RowSource,
    shards: int,
    index: int,
    own: OwnRows | None,
    fetch: FetchRows | None,
) -> Tensors:
    if source.local:
        if own is None:
            raise FailedPrecondition(
                f"job {job_id}: the adoption keeps table rows this shard would hold already, "
                "but it holds no older copy of the job"
            )
        return own(shards, index)
    if fetch is None:
        raise FailedPrecondition(
            f"job {job_id}: this shard cannot read table rows from shard {source.address}"
        )
    return fetch(source.address, shards, index)
