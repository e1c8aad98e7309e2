"""A job's embedding tables as the coordinator sees them: checked in the spec, spread over
the job's shards row-wise (id % shards), and read back whole for the fetched model.

The coordinator never holds a table while the job runs: its rows start on the shards (drawn
there, or sent once when ``init_from`` gave them) and a fetch reads them back in blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pscluster.errors import InvalidArgument
from pscluster.model.sparse_optimizer import parse_sparse_optimizer
from pscluster.server.tables.spec import MAX_DIM
from pscluster.shard_client import ShardClient
from pscluster.shard_client.tables import lookup_rows
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

# Rows per Lookup when a whole table is read back (a fetch): 16 MB of float32 at width 64.
READ_BLOCK_ROWS = 1 << 16


def validate_tables(spec: co_pb2.JobSpec, taken: set[str]) -> None:
    """The tables' names and shapes, and the sparse optimizer that goes with them."""
    names: set[str] = set()
    for i, table in enumerate(spec.model.tables):
        if not table.name or table.name in taken or table.name in names:
            raise InvalidArgument(
                f"model.tables[{i}].name {table.name!r} is empty or names another entry"
            )
        names.add(table.name)
        shape = list(table.shape)
        if len(shape) != 2 or shape[0] < 1 or not 1 <= shape[1] <= MAX_DIM:
            raise InvalidArgument(
                f"model.tables[{i}] ({table.name!r}) has shape {shape}; expected "
                f"[rows >= 1, 1 <= dim <= {MAX_DIM}]"
            )
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
        if rows.dtype != torch.float32 or list(rows.shape) != list(table.shape):
            raise InvalidArgument(
                f"the initial state has table {table.name!r} as {rows.dtype} "
                f"{list(rows.shape)}; the spec says float32 {list(table.shape)}"
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
                num_rows=table.shape[0],
                dim=table.shape[1],
                shards=shards,
                shard_index=shard,
                initial_given=given is not None,
                init_seed=spec.seed,
            )
        )
        if given is not None:
            rows.append(given[shard::shards].reshape(-1))
    return configs, rows


def read_tables(
    client: ShardClient, job_id: str, spec: co_pb2.JobSpec, addresses: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Every table whole, read from the shards in blocks of ids."""
    out = {}
    for index, table in enumerate(spec.model.tables):
        num_rows, dim = int(table.shape[0]), int(table.shape[1])
        whole = torch.empty((num_rows, dim), dtype=torch.float32)
        for start in range(0, num_rows, READ_BLOCK_ROWS):
            ids = torch.arange(start, min(num_rows, start + READ_BLOCK_ROWS), dtype=torch.int64)
            whole[start : start + ids.numel()] = lookup_rows(
                client, job_id, addresses, index, ids, dim
            )
        out[table.name] = whole
    return out
