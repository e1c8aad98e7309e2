"""A worker's view of one job's shards: pull the whole vector, push each shard its slice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pscluster.model.partition import RowPartitioner
from pscluster.shard_client.client import F32, ShardClient
from pscluster.shard_client.errors import ShardError
from pscluster.shard_client.ranges import PushExtras, ShardRange, Snapshot, vector_sizes
from pscluster.shard_client.streams import Payload
from pscluster.shard_client.tables import MODULO, lookup_rows
from pscluster.v1 import parameter_server_pb2 as ps_pb2


class JobShards:
    """The job's ranges bound to a :class:`ShardClient` (which may serve other jobs too)."""

    def __init__(self, client: ShardClient, job_id: str, ranges: Sequence[ShardRange]) -> None:
        self.client = client
        self.job_id = job_id
        self.ranges = list(ranges)
        self.size, self.buffer_size = vector_sizes(self.ranges)

    def pull(
        self,
        worker_id: str,
        min_versions: Sequence[int] | None,
        timeout: float,
        dtype: int = F32,
        into: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Snapshot:
        """Every range, at once; blocks while a shard's consistency mode makes this worker
        wait (an empty ``worker_id`` is an observer and never waits on the mode). ``into``
        (float32 values, float64 buffers) are filled instead of new tensors."""
        return self.client.pull_all(
            self.job_id,
            self.ranges,
            worker_id=worker_id,
            min_versions=min_versions,
            dtype=dtype,
            timeout=timeout,
            into=into,
        )

    def push(
        self,
        worker_id: str,
        seq: int,
        payloads: Mapping[int, Payload],
        codec: str,
        base: Snapshot,
        batch_size: int,
        timeout: float,
        extras: PushExtras | None = None,
    ) -> dict[int, ps_pb2.PushReply | ShardError]:
        """Push shard ``i`` its ``payloads[i]``; each shard's reply (or ShardError) by index."""
        return self.client.push_all(
            self.job_id,
            self.ranges,
            payloads,
            worker_id=worker_id,
            seq=seq,
            codec=codec,
            base=base,
            batch_size=batch_size,
            extras=extras,
            timeout=timeout,
        )

    def lookup(
        self,
        table: int,
        ids: torch.Tensor,
        dim: int,
        timeout: float,
        dtype: int = F32,
        partitioner: RowPartitioner = MODULO,
        *,
        peek: bool = False,
    ) -> torch.Tensor:
        """Rows of one of the job's tables from the shards that own them (float32; sent as
        ``dtype``)."""
        addresses = [r.address for r in self.ranges]
        return lookup_rows(
            self.client,
            self.job_id,
            addresses,
            table,
            ids,
            dim,
            dtype=dtype,
            timeout=timeout,
            partitioner=partitioner,
            peek=peek,
        )
