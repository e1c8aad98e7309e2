"""A job's embedding tables as the coordinator sees them: checked in the spec, spread over
the job's shards row-wise (id % shards), and read back whole for the fetched model.

The coordinator never holds a table while the job runs: its rows start on the shards (drawn
there, or sent once when ``init_from`` gave them) and a fetch reads them back in blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pscluster.errors import InvalidArgument
from pscluster.model import state
from pscluster.model.safetensors_stream import Entry
from pscluster.model.sparse_optimizer import parse_sparse_optimizer
from pscluster.server.tables.initial import initial_rows
from pscluster.server.tables.spec import table_spec
from pscluster.shard_client import ShardClient
from pscluster.shard_client.tables import export_rows, lookup_rows
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

# Rows per Lookup when a whole table is read back (a fetch): 16 MB of float32 at width 64.
READ_BLOCK_ROWS = 1 << 16


def validate_tables(spec: co_pb2.JobSpec, taken: set[str]) -> None:
    """The tables' names, the sparse optimizer that goes with them, and each table's config
    through the shards' own parser (rows, width, padding, a dynamic table's settings), so a
    job the coordinator accepts is one every shard accepts."""
    names: set[str] = set()
    for i, table in enumerate(spec.model.tables):
        if not table.name or table.name in taken or table.name in names:
            raise InvalidArgument(
                f"model.tables[{i}].name {table.name!r} is empty or names another entry"
            )
        names.add(table.name)
    for config in shard_tables(spec, 0, 1, {})[0]:
        table_spec(config)
    if not spec.model.tables:
        if spec.sparse_optimizer.name:
            raise InvalidArgument("sparse_optimizer is set but the model has no tables")
        return
    parse_sparse_optimizer(spec.sparse_optimizer)
    if spec.local_steps > 1:
        raise InvalidArgument("local_steps > 1 cannot be used with tables on the shards")


def check_given_rows(spec: co_pb2.JobSpec, tensors: dict[str, torch.Tensor]) -> None:
    """A table's rows in the initial state (init_from gave them) must be its float32 shape."""
    for table in spec.model.tables:
        rows = tensors.get(table.name)
        if rows is None:
            continue
        shape = [table.num_rows, table.dim]
        if table.dynamic or rows.dtype != torch.float32 or list(rows.shape) != shape:
            raise InvalidArgument(
                f"the initial state has table {table.name!r} as {rows.dtype} "
                f"{list(rows.shape)}; the spec says float32 {shape} (a dynamic table takes none)"
            )


def shard_tables(
    spec: co_pb2.JobSpec, shard: int, shards: int, initial: dict[str, torch.Tensor]
) -> tuple[list[ps_pb2.TableConfig], list[torch.Tensor]]:
    """Shard number ``shard``'s table configs, and the given rows it owns (flat, in the order
    of the configs that have ``initial_given``: they follow its initial values)."""
    configs, rows = [], []
    for table in spec.model.tables:
        given = initial.get(table.name)
        configs.append(
            ps_pb2.TableConfig(
                name=table.name,
                num_rows=table.num_rows,
                dim=table.dim,
                shards=shards,
                shard_index=shard,
                initial_given=given is not None,
                init_seed=table.init_seed if table.dynamic else spec.seed,
                has_padding=table.has_padding,
                padding_idx=table.padding_idx,
                dynamic=table.dynamic,
                init_std=table.init_std,
                admit_after=table.admit_after,
                evict_after=table.evict_after,
                capacity=table.capacity,
            )
        )
        if given is not None:
            rows.append(given[shard::shards].reshape(-1))
    return configs, rows


def table_entries(
    client: ShardClient, job_id: str, spec: co_pb2.JobSpec, addresses: Sequence[str]
) -> list[Entry]:
    """Every table as safetensors entries. A fixed table's rows are read from the shards in
    blocks of ids while the entry is streamed; a dynamic table is exported first (its size
    is not known before), as ``<path>.ids`` (sorted) and its rows."""
    out: list[Entry] = []
    for index, table in enumerate(spec.model.tables):
        if table.dynamic:
            exported = dynamic_table(client, job_id, addresses, index, table)
            out += [Entry.of(name, tensor) for name, tensor in exported.items()]
            continue

        def blocks(index: int = index, table: co_pb2.TableInfo = table) -> Iterator[torch.Tensor]:
            for start in range(0, table.num_rows, READ_BLOCK_ROWS):
                end = min(table.num_rows, start + READ_BLOCK_ROWS)
                ids = torch.arange(start, end, dtype=torch.int64)
                yield lookup_rows(client, job_id, addresses, index, ids, table.dim, peek=True)

        out.append(Entry(table.name, torch.float32, (table.num_rows, table.dim), blocks))
    return out


MAX_LOOKUP_IDS = 1_000_000


def table_index(spec: co_pb2.JobSpec, name: str) -> tuple[int, co_pb2.TableInfo]:
    """The index and the description of the job's table ``name`` (InvalidArgument naming the
    tables it has)."""
    for index, table in enumerate(spec.model.tables):
        if table.name == name:
            return index, table
    names = [t.name for t in spec.model.tables]
    raise InvalidArgument(f"the job has no table {name!r}; its tables are {names}")


def check_ids(ids: torch.Tensor, table: co_pb2.TableInfo) -> None:
    name, rows = table.name, table.num_rows if not table.dynamic else 2**63 - 1
    if ids.numel() > MAX_LOOKUP_IDS:
        raise InvalidArgument(f"{ids.numel()} ids in one lookup; ask for {MAX_LOOKUP_IDS} at most")
    bad = (ids < 0) | (ids >= rows)
    if bool(bad.any()):
        raise InvalidArgument(f"table {name!r} has ids 0 .. {rows - 1}; got id {int(ids[bad][0])}")


def saved_rows(path: Path, table: co_pb2.TableInfo, ids: torch.Tensor) -> torch.Tensor:
    """Rows of a table in a saved model (safetensors), read by id through a memory map: a
    lookup in a saved 3 GB table reads only the rows asked for. A dynamic table's ids not in
    it read their initial values, as in training before they were admitted."""
    if not table.dynamic:
        return torch.from_numpy(np.ascontiguousarray(_saved(path, table.name)[ids.numpy()]))
    held = _saved(path, table.name.removesuffix(".weight") + ".ids").reshape(-1)
    rows = initial_rows(table.init_seed, ids.numpy(), table.dim, table.init_std)
    if held.size:
        at = np.minimum(np.searchsorted(held, ids.numpy()), held.size - 1)
        found = held[at] == ids.numpy()
        rows[torch.from_numpy(found)] = torch.from_numpy(
            np.ascontiguousarray(_saved(path, table.name)[at[found]])
        )
    return rows


def _saved(path: Path, name: str) -> np.ndarray:
    """Tensor ``name`` of a safetensors file as a read-only memory map (the header parsed by
    :func:`pscluster.model.state.header`, the file never read whole)."""
    blob = np.memmap(path, np.uint8, "r")
    header, start = state.header(blob.data, "the saved model")
    entry = header.get(name)
    if not isinstance(entry, dict):
        raise InvalidArgument(f"the saved model has no table entry {name!r}")
    dtype = torch.empty(0, dtype=state.dtype_of(entry.get("dtype"), name)).numpy().dtype
    begin, end = (int(o) for o in entry["data_offsets"])
    shape = tuple(int(d) for d in entry["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize or start + end > blob.size:
        raise InvalidArgument(f"the saved entry {name!r} is truncated")
    return blob[start + begin : start + end].view(dtype).reshape(shape)


def dynamic_table(
    client: ShardClient,
    job_id: str,
    addresses: Sequence[str],
    index: int,
    table: co_pb2.TableInfo,
) -> dict[str, torch.Tensor]:
    """A dynamic table as a fetched model holds it: ``<path>.ids`` (sorted) and the rows."""
    parts = [export_rows(client, job_id, address, index, table.dim) for address in addresses]
    ids = torch.cat([i for i, _ in parts])
    rows = torch.cat([r for _, r in parts])
    order = torch.argsort(ids)
    path = table.name.removesuffix(".weight")
    return {f"{path}.ids": ids[order], table.name: rows[order]}
