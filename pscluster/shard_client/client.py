"""Every call made to parameter-server shards, by workers, the coordinator, tests and benches.

One channel per shard address, opened on first use and kept. A call that concerns several
shards goes to all of them at once and waits for the slowest, not for the sum: unary calls as
futures, streams on a small thread pool. Every call has a deadline, and every failure comes
back as one :class:`~pscluster.shard_client.errors.ShardError` naming the shard. Tensors go
through the hand-framed fast path (:mod:`pscluster.shard_client.streams`) everywhere, the
coordinator's InitJob and final-model pulls included.

Nothing here retries: callers decide (see :mod:`pscluster.transport.retry`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.config import Settings
from pscluster.server.tables.rows import RowBlockInfo
from pscluster.shard_client.errors import ShardError, shard_error
from pscluster.shard_client.layout import RelayoutCalls
from pscluster.shard_client.ranges import PushExtras, ShardRange, Snapshot, vector_sizes
from pscluster.shard_client.streams import Payload, Streams, init_messages, push_messages, read_pull
from pscluster.transport.channel import open_channel
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

# Status calls (stats, health) feed monitoring: answer fast rather than hang a status line.
STATUS_TIMEOUT_SECONDS = 3.0
# Small control calls (SetMembers, DropJob) sit on a worker's AcquireTask or a client's
# CancelJob: a shard that cannot answer them in this time is treated as unreachable.
CONTROL_TIMEOUT_SECONDS = 5.0
F32 = common_pb2.DTYPE_FLOAT32
T = TypeVar("T")
# (address, its config, its initial float32 values): one shard's part of a new job.
ShardInit = tuple[str, ps_pb2.ShardJobConfig, torch.Tensor]


@dataclass(frozen=True)
class _Shard:
    channel: grpc.Channel
    stub: ps_grpc.ParameterServerStub
    streams: Streams


class ShardClient(RelayoutCalls):
    """``parallel`` bounds the streams in flight at once (pulls, pushes, inits). The calls
    of a live re-layout (HoldJob, ExportJob, AdoptJob) come from :class:`RelayoutCalls`."""

    def __init__(self, settings: Settings, *, parallel: int = 16) -> None:
        self.settings = settings
        self.timeout = settings.rpc_timeout_seconds
        self.status_timeout = min(STATUS_TIMEOUT_SECONDS, settings.rpc_timeout_seconds)
        self.control_timeout = min(CONTROL_TIMEOUT_SECONDS, settings.rpc_timeout_seconds)
        self._lock = threading.Lock()
        self._shards: dict[str, _Shard] = {}
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="shard-call")

    def _shard(self, address: str) -> _Shard:
        with self._lock:
            shard = self._shards.get(address)
            if shard is None:
                channel = open_channel(address, self.settings)
                shard = _Shard(channel, ps_grpc.ParameterServerStub(channel), Streams(channel))
                self._shards[address] = shard
            return shard

    def streams(self, address: str) -> Streams:
        """The hand-framed streaming calls of one shard (pscluster.shard_client.tables)."""
        return self._shard(address).streams

    def stub(self, address: str) -> ps_grpc.ParameterServerStub:
        """The generated stub (for calls this client has no method for: tests, fuzzing)."""
        return self._shard(address).stub

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        with self._lock:
            for shard in self._shards.values():
                shard.channel.close()
            self._shards.clear()

    def each(self, calls: Sequence[tuple[str, Callable[[], T]]]) -> list[T | ShardError]:
        """Run each ``(address, call)`` at once (the calls block: streams); the results in
        order, a ShardError in place of a call that failed."""
        if len(calls) == 1:  # no thread hop for a one-shard job
            return [_run(*calls[0])]
        return [f.result() for f in self.start(calls)]

    def start(self, calls: Sequence[tuple[str, Callable[[], T]]]) -> list[Future[T | ShardError]]:
        """Start each ``(address, call)`` on the client's threads and return at once: each
        future's result is the call's, or the ShardError it failed with."""
        return [self._pool.submit(_run, address, call) for address, call in calls]

    # --- a job's life: InitJob, SetMembers, GetJobStats, DropJob, health ---

    def init_job(self, inits: Sequence[ShardInit]) -> list[bool]:
        """Create the job's slice on each shard, all at once; per shard, False if it already
        had the job (a retried init whose earlier attempt reached it). Raises the first
        ShardError once every call has ended."""
        chunk = self.settings.chunk_bytes

        def one(address: str, config: ps_pb2.ShardJobConfig, values: torch.Tensor) -> bool:
            messages = init_messages(config, values, chunk)
            self._shard(address).streams.init(messages, timeout=self.timeout)
            return True

        results = self.each([(a, partial(one, a, c, v)) for a, c, v in inits])
        failed = [
            r
            for r in results
            if isinstance(r, ShardError) and r.status != grpc.StatusCode.ALREADY_EXISTS
        ]
        if failed:
            raise failed[0]
        return [r is True for r in results]

    def set_members(
        self,
        addresses: Sequence[str],
        job_id: str,
        members: Sequence[str],
        generation: int,
        excluded: Sequence[str] = (),
    ) -> None:
        """Send a job's membership to every shard; raises the first ShardError (after all
        answered) if a shard did not take it."""
        request = ps_pb2.SetMembersRequest(
            job_id=job_id,
            worker_ids=list(members),
            generation=generation,
            excluded_worker_ids=list(excluded),
        )
        timeout = self.control_timeout
        results = self._unary(
            addresses, lambda s: s.stub.SetMembers.future(request, timeout=timeout)
        )
        if any(isinstance(r, ShardError) for r in results):
            raise first_error(results)

    def job_stats(
        self, addresses: Sequence[str], job_id: str
    ) -> list[common_pb2.ShardJobStats | ShardError]:
        """Each shard's stats, or the error it answered, in the order of ``addresses``."""
        request = ps_pb2.JobStatsRequest(job_id=job_id)
        timeout = self.status_timeout
        return self._unary(addresses, lambda s: s.stub.GetJobStats.future(request, timeout=timeout))

    def drop_job(self, addresses: Sequence[str], job_id: str) -> list[ShardError]:
        """Free the job everywhere; a shard that never had it is fine. Returns what failed."""
        request = ps_pb2.DropJobRequest(job_id=job_id)
        timeout = self.control_timeout
        results = self._unary(addresses, lambda s: s.stub.DropJob.future(request, timeout=timeout))
        return [
            r
            for r in results
            if isinstance(r, ShardError) and r.status != grpc.StatusCode.NOT_FOUND
        ]

    def health(self, addresses: Sequence[str]) -> list[ShardError | None]:
        """The standard gRPC health check of each shard: None if SERVING, else the problem."""
        request = health_pb2.HealthCheckRequest(service="")
        timeout = self.status_timeout
        replies = self._unary(
            addresses,
            lambda s: health_pb2_grpc.HealthStub(s.channel).Check.future(request, timeout=timeout),
        )
        out: list[ShardError | None] = []
        for a, reply in zip(addresses, replies, strict=True):
            if isinstance(reply, ShardError):
                out.append(reply)
            elif reply.status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                out.append(ShardError(a, grpc.StatusCode.UNAVAILABLE, f"health is {status}"))
            else:
                out.append(None)
        return out

    def _unary(
        self, addresses: Sequence[str], start: Callable[[_Shard], grpc.Future[Any]]
    ) -> list[Any]:
        """One unary call per shard (``start`` sends it), as futures: no threads, every shard
        at once; the replies (or ShardErrors) in order."""
        calls = [(a, start(self._shard(a))) for a in addresses]
        return [_result(a, future) for a, future in calls]

    # --- parameters: Pull and Push ---

    def pull_all(
        self,
        job_id: str,
        ranges: Sequence[ShardRange],
        *,
        worker_id: str = "",
        min_versions: Sequence[int] | None = None,
        dtype: int = F32,
        timeout: float | None = None,
        into: tuple[torch.Tensor, torch.Tensor] | None = None,
        progress: Callable[[int, int], None] | None = None,
        layout_generation: int = 0,
    ) -> Snapshot:
        """The job's parameters and buffers, every range pulled at once and received in place.

        An empty ``worker_id`` is an observer's read (evaluation, the final model): it never
        waits on the consistency mode. A worker's pull blocks while the mode makes it wait,
        up to ``timeout`` (the client's RPC timeout if None); ``min_versions`` are per shard
        (sync: the ``next_version`` its last push was answered with). ``dtype`` is the wire
        dtype; the values arrive as float32 whatever it is. ``into`` (float32, float64) are
        filled instead of new tensors. ``progress(i, n)``: ``n`` bytes of range ``i`` are in
        place (float32 pulls). ``layout_generation``: of the plan ``ranges`` come from (0: not
        checked; another one here answers LayoutMovedError). Raises the first ShardError once
        every pull ended.
        """
        size, buffer_size = vector_sizes(ranges)
        values, buffers = into or (
            torch.empty(size, dtype=torch.float32),
            torch.empty(buffer_size, dtype=torch.float64),
        )
        mins = list(min_versions) if min_versions is not None else [0] * len(ranges)
        wait = self.timeout if timeout is None else timeout

        def one(i: int) -> ps_pb2.PullHeader:
            r = ranges[i]
            request = ps_pb2.PullRequest(
                job_id=job_id,
                worker_id=worker_id,
                min_version=mins[i],
                dtype=common_pb2.DType.ValueType(dtype),
                layout_generation=layout_generation,
            )
            responses = self._shard(r.address).streams.pull(request, timeout=wait)
            return read_pull(
                r.address,
                responses,
                values[r.start : r.start + r.length],
                buffers[r.buffer_start : r.buffer_start + r.buffer_length],
                None if progress is None else partial(progress, i),
            )

        results = self.each([(r.address, partial(one, i)) for i, r in enumerate(ranges)])
        headers = [h for h in results if not isinstance(h, ShardError)]
        if len(headers) != len(results):
            raise first_error(results)
        return Snapshot(
            values,
            buffers,
            [h.version for h in headers],
            [h.clock for h in headers],
            max((h.waited_seconds for h in headers), default=0.0),
            max(headers, key=lambda h: h.revision).local_steps if headers else 0,
        )

    def push_all(
        self,
        job_id: str,
        ranges: Sequence[ShardRange],
        payloads: Mapping[int, Payload],
        *,
        worker_id: str,
        seq: int,
        codec: str,
        base: Snapshot,
        batch_size: int,
        extras: PushExtras | None = None,
        timeout: float | None = None,
        layout_generation: int = 0,
    ) -> dict[int, ps_pb2.PushReply | ShardError]:
        """Push shard ``i`` (an index into ``ranges``) its ``payloads[i]`` (its slice of the
        update, encoded by ``codec``) and its slice of the buffers' change, all at once; each
        shard's reply, or its ShardError, by index. Shards not in ``payloads`` are left out.

        ``base`` is the snapshot the update was computed on (each shard's version and clock);
        a retry of the same push must reuse ``seq``. ``layout_generation`` as for a pull.
        """
        extras = extras or PushExtras()
        chunk = self.settings.chunk_bytes
        wait = self.timeout if timeout is None else timeout

        def one(i: int) -> ps_pb2.PushReply:
            r = ranges[i]
            blocks, rows = extras.rows.get(i, ((), b""))
            header = push_header(job_id, worker_id, seq, base, i, r, batch_size, extras)
            header.layout_generation = layout_generation
            header.codec = codec
            header.payload_bytes = len(memoryview(payloads[i]).cast("B"))
            header.rows.extend(_row_block(b) for b in blocks)
            messages = push_messages(header, payloads[i], chunk, rows)
            reply: ps_pb2.PushReply = self._shard(r.address).streams.push(messages, timeout=wait)
            return reply

        order = sorted(payloads)
        results = self.each([(ranges[i].address, partial(one, i)) for i in order])
        return dict(zip(order, results, strict=True))


def push_header(
    job_id: str,
    worker_id: str,
    seq: int,
    base: Snapshot,
    index: int,
    r: ShardRange,
    batch_size: int,
    extras: PushExtras,
) -> ps_pb2.PushHeader:
    """The header of push ``seq`` to shard ``index`` (range ``r``) of an update computed on
    ``base``: float32 values, no codec, no rows (the caller adds what it sends beside)."""
    return ps_pb2.PushHeader(
        job_id=job_id,
        worker_id=worker_id,
        seq=seq,
        base_version=base.versions[index],
        base_clock=base.clocks[index],
        length=r.length,
        dtype=F32,
        batch_size=batch_size,
        codec="none",
        buffer_delta=extras.buffer_slice(r),
        grad_scale=extras.grad_scale if extras.grad_scale != 1.0 else 0.0,
        local_steps=extras.local_steps,
    )


def _run(address: str, call: Callable[[], T]) -> T | ShardError:
    try:
        return call()
    except grpc.RpcError as e:
        return shard_error(address, e)
    except ShardError as e:
        return e


def _row_block(block: RowBlockInfo) -> ps_pb2.RowBlock:
    dtype = common_pb2.DType.ValueType(block.dtype)
    return ps_pb2.RowBlock(table=block.table, count=block.count, dtype=dtype)


def _result(address: str, future: grpc.Future[Any]) -> Any:
    """A call's reply, or the ShardError it ended with."""
    try:
        return future.result()
    except grpc.RpcError as e:
        return shard_error(address, e)


def first_error(results: Sequence[object]) -> ShardError:
    return next(r for r in results if isinstance(r, ShardError))
