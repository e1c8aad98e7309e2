"""A worker's view of one job's shards: pull the whole vector, push each shard its slice."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence

import grpc
import torch

from pscluster.model.partition import RowPartitioner
from pscluster.shard_client.client import F32, ShardClient
from pscluster.shard_client.errors import ShardError, shard_error
from pscluster.shard_client.ranges import PushExtras, ShardRange, Snapshot, vector_sizes
from pscluster.shard_client.streams import Payload
from pscluster.shard_client.tables import MODULO, lookup_rows
from pscluster.v1 import parameter_server_pb2 as ps_pb2


class JobShards:
    """The job's ranges bound to a :class:`ShardClient` (which may serve other jobs too).

    ``layout_generation`` is that of the plan the ranges come from: every pull, push and
    lookup names it, and a shard that holds the job at another one (or no longer holds it:
    it moved) answers :class:`~pscluster.shard_client.errors.LayoutMovedError`. 0: not
    checked.
    """

    def __init__(
        self,
        client: ShardClient,
        job_id: str,
        ranges: Sequence[ShardRange],
        layout_generation: int = 0,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.ranges = list(ranges)
        self.size, self.buffer_size = vector_sizes(self.ranges)
        self.layout_generation = layout_generation

    def pull(
        self,
        worker_id: str,
        min_versions: Sequence[int] | None,
        timeout: float,
        dtype: int = F32,
        into: tuple[torch.Tensor, torch.Tensor] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Snapshot:
        """Every range, at once; blocks while a shard's consistency mode makes this worker
        wait (an empty ``worker_id`` is an observer and never waits on the mode). ``into``
        (float32 values, float64 buffers) are filled instead of new tensors; ``progress(i,
        n)``: ``n`` bytes of range ``i`` are in place."""
        return self.client.pull_all(
            self.job_id,
            self.ranges,
            worker_id=worker_id,
            min_versions=min_versions,
            dtype=dtype,
            timeout=timeout,
            into=into,
            progress=progress,
            layout_generation=self.layout_generation,
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
            layout_generation=self.layout_generation,
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
            layout_generation=self.layout_generation,
        )


class StreamedPush:
    """One push whose streams were started before its payload was complete: a gRPC future
    per shard, each sending what its chunk iterator yields as it yields it."""

    def __init__(self, calls: Mapping[int, tuple[str, grpc.Future[ps_pb2.PushReply]]]) -> None:
        self._calls = calls

    def results(self) -> dict[int, ps_pb2.PushReply | ShardError]:
        """Each shard's reply, or the ShardError its call ended with, by index (blocks)."""
        out: dict[int, ps_pb2.PushReply | ShardError] = {}
        for i, (address, future) in self._calls.items():
            try:
                out[i] = future.result()
            except grpc.RpcError as e:
                out[i] = shard_error(address, e)
            except grpc.FutureCancelledError:
                out[i] = ShardError(address, grpc.StatusCode.CANCELLED, "the push was abandoned")
        return out

    def cancel(self) -> None:
        """Break every stream off: a shard applies nothing of a push it did not receive whole."""
        for _, future in self._calls.values():
            future.cancel()


def start_streamed_push(
    shards: JobShards,
    header: Callable[[int], ps_pb2.PushHeader],
    chunks: Callable[[int], Iterator[bytes]],
    timeout: float,
) -> StreamedPush:
    """Start shard ``i``'s push with ``header(i)`` (sent with the job's layout generation)
    and the data chunks ``chunks(i)`` yields, on every shard at once, and return without
    waiting for any of it."""
    calls = {}
    for i, r in enumerate(shards.ranges):
        first = header(i)
        first.layout_generation = shards.layout_generation
        messages = itertools.chain([ps_pb2.PushChunk(header=first)], chunks(i))
        future = shards.client.streams(r.address).push.future(messages, timeout=timeout)
        calls[i] = (r.address, future)
    return StreamedPush(calls)
