"""Rows of a job's embedding tables, looked up on the shards that own them.

A table's rows are spread over the job's shards (in the order of the job's ranges) by its
:class:`~pscluster.model.partition.RowPartitioner` (modulo for a fixed table, hash for a
dynamic one), so a batch's ids are split by owner, each shard is asked for its own at once,
and the answers are put back in the order of the ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import grpc
import torch

from pscluster.model.partition import ModuloRows, RowPartitioner
from pscluster.server.tables.rows import RowBlockInfo, encode_rows
from pscluster.shard_client.client import ShardClient, first_error
from pscluster.shard_client.errors import ShardError, shard_error
from pscluster.shard_client.streams import read_lookup, read_rows
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

F32 = common_pb2.DTYPE_FLOAT32
MODULO = ModuloRows()


def owners(
    ids: torch.Tensor, shards: int, partitioner: RowPartitioner = MODULO
) -> list[tuple[int, torch.Tensor]]:
    """(shard index, positions in ``ids``) for each shard that owns some of ``ids``."""
    owner = partitioner.owner(ids, shards)
    return [
        (k, (owner == k).nonzero().reshape(-1)) for k in range(shards) if bool((owner == k).any())
    ]


def lookup_rows(
    client: ShardClient,
    job_id: str,
    addresses: Sequence[str],
    table: int,
    ids: torch.Tensor,
    dim: int,
    *,
    dtype: int = F32,
    timeout: float | None = None,
    peek: bool = False,
    partitioner: RowPartitioner = MODULO,
    layout_generation: int = 0,
) -> torch.Tensor:
    """The rows of ``ids`` (int64, any order, repeats allowed) as float32 (len(ids), dim).
    Raises the first ShardError once every shard asked has answered. ``layout_generation``:
    of the plan ``addresses`` come from (0: not checked)."""
    out = torch.empty((ids.numel(), dim), dtype=torch.float32)
    wait = client.timeout if timeout is None else timeout
    parts = owners(ids, len(addresses), partitioner)

    def one(shard: int, positions: torch.Tensor) -> None:
        wanted = ids.index_select(0, positions)
        request = ps_pb2.LookupRequest(
            job_id=job_id,
            table=table,
            ids=wanted.numpy().tobytes(),
            dtype=common_pb2.DType.ValueType(dtype),
            peek=peek,
            layout_generation=layout_generation,
        )
        address = addresses[shard]
        responses = client.streams(address).lookup(request, timeout=wait)
        out.index_copy_(0, positions, read_lookup(address, responses, wanted.numel()))

    calls = [(addresses[k], partial(one, k, positions)) for k, positions in parts]
    results = client.each(calls)
    if any(isinstance(r, ShardError) for r in results):
        raise first_error(results)
    return out


def split_rows(
    rows: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    shards: int,
    dtype: int = F32,
    partitioners: Sequence[RowPartitioner] = (),
) -> dict[int, tuple[list[RowBlockInfo], bytes]]:
    """A push's row gradients (per table: ids, grads) cut by owning shard and encoded: what
    :class:`~pscluster.shard_client.PushExtras` carries to each shard."""
    per_shard: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for table, (ids, grads) in rows.items():
        partitioner = partitioners[table] if partitioners else MODULO
        for shard, positions in owners(ids, shards, partitioner):
            per_shard.setdefault(shard, {})[table] = (
                ids.index_select(0, positions),
                grads.index_select(0, positions),
            )
    return {shard: encode_rows(blocks, dtype) for shard, blocks in per_shard.items()}


def export_rows(
    client: ShardClient, job_id: str, address: str, table: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row one shard holds of a table: (ids int64, rows float32 (n, dim))."""
    request = ps_pb2.LookupRequest(job_id=job_id, table=table, all_rows=True)
    try:
        responses = client.streams(address).lookup(request, timeout=client.timeout)
        ids, rows = read_rows(address, responses, None)
    except grpc.RpcError as e:
        raise shard_error(address, e) from None
    if rows.shape[1] != dim:
        raise ShardError(
            address,
            grpc.StatusCode.INTERNAL,
            f"an export of width {rows.shape[1]}; the table's is {dim}",
        )
    return ids, rows
