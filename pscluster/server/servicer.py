"""The ``pscluster.v1.ParameterServer`` servicer: decode, call the shard, encode.

All logic lives in :class:`~pscluster.server.shard.Shard` and
:class:`~pscluster.server.shard_job.ShardJob`; domain errors become status codes in
:func:`~pscluster.transport.errors.grpc_errors`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from pscluster.config import Settings
from pscluster.errors import InvalidArgument
from pscluster.server import convert
from pscluster.server.adopted_rows import RowSource
from pscluster.server.adopted_state import Segment
from pscluster.server.peer_ranges import PeerRanges
from pscluster.server.shard import Shard
from pscluster.server.telemetry import ShardTelemetry
from pscluster.transport import framing, wire
from pscluster.transport.errors import grpc_errors
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

SERVICE_NAME = "pscluster.v1.ParameterServer"
# A blocked pull gives up this long before the caller's deadline, so that the caller hears
# what it waited for rather than a bare DEADLINE_EXCEEDED from its own side.
_REPLY_MARGIN_SECONDS = 0.05
# Room for the framing of a data chunk inside a message.
_CHUNK_OVERHEAD = 64


class ParameterServerServicer:
    def __init__(
        self,
        shard: Shard,
        settings: Settings,
        advertise: str = "",
        telemetry: ShardTelemetry | None = None,
    ) -> None:
        self._shard = shard
        self._settings = settings
        # The other shards, for the ranges an AdoptJob names a source for.
        self.peers = PeerRanges(settings)
        # Push latency goes here when metrics are served (None: not measured).
        self.telemetry = telemetry
        # The address reported in stats; set by serve() once the port is bound.
        self.advertise = advertise

    @grpc_errors
    def InitJob(
        self,
        request_iterator: Iterator[ps_pb2.InitJobChunk | memoryview],
        context: grpc.ServicerContext,
    ) -> ps_pb2.InitJobReply:
        first = next(request_iterator, None)
        if not isinstance(first, ps_pb2.InitJobChunk) or first.WhichOneof("part") != "config":
            raise InvalidArgument("an InitJob stream must start with the config, then data chunks")
        config = convert.job_config(first.config)
        data = _data(request_iterator, "InitJob", "config")
        job = self._shard.init_job(config, data, first.config.initial_buffers)
        return ps_pb2.InitJobReply(version=job.version, checksum=job.checksum())

    @grpc_errors
    def SetMembers(
        self, request: ps_pb2.SetMembersRequest, context: grpc.ServicerContext
    ) -> ps_pb2.SetMembersReply:
        job = self._shard.job(request.job_id)
        generation = job.set_members(
            list(request.worker_ids), request.generation, list(request.excluded_worker_ids)
        )
        return ps_pb2.SetMembersReply(generation=generation)

    @grpc_errors
    def SetConsistency(
        self, request: ps_pb2.SetConsistencyRequest, context: grpc.ServicerContext
    ) -> ps_pb2.SetConsistencyReply:
        job = self._shard.job(request.job_id)
        revision, version, undone = job.set_consistency(
            request.mode,
            request.staleness,
            request.backup_workers,
            request.revision,
            convert.trial_step(request.trial),
            request.local_steps,
        )
        return ps_pb2.SetConsistencyReply(revision=revision, version=version, undone=undone)

    @grpc_errors
    def Pull(
        self, request: ps_pb2.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.PullChunk | bytes]:
        job = self._shard.job_at(request.job_id, request.layout_generation)
        chunk_bytes = self._chunk_bytes(request.chunk_bytes)
        # A caller that goes away wakes the wait, which then notices and ends.
        context.add_callback(job.wake)
        snapshot = job.pull(
            request.worker_id,
            request.min_version,
            request.dtype,
            timeout=self._wait_budget(context),
            cancelled=lambda: not context.is_active(),
        )
        with snapshot:
            yield convert.pull_header(snapshot)
            yield from snapshot.payload.chunks(chunk_bytes, framing.frame)

    @grpc_errors
    def Push(
        self,
        request_iterator: Iterator[ps_pb2.PushChunk | memoryview],
        context: grpc.ServicerContext,
    ) -> ps_pb2.PushReply:
        started = time.perf_counter()
        first = next(request_iterator, None)
        if not isinstance(first, ps_pb2.PushChunk) or first.WhichOneof("part") != "header":
            raise InvalidArgument("a Push stream must start with a PushHeader, then data chunks")
        header = convert.push_header(first.header)
        job = self._shard.job_at(header.job_id, first.header.layout_generation)
        # Timed only once the job is known: a push to an unknown job creates no series.
        outcome = "error"
        try:
            result = job.push(header, _data(request_iterator, "Push", "header"))
            outcome = result.outcome.value
            return convert.push_reply(result)
        finally:
            if self.telemetry is not None:
                self.telemetry.observe_push(header.job_id, outcome, time.perf_counter() - started)

    @grpc_errors
    def Lookup(
        self, request: ps_pb2.LookupRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.PullChunk | bytes]:
        job = self._shard.job_at(request.job_id, request.layout_generation)
        chunk_bytes = self._chunk_bytes(request.chunk_bytes)
        dtype = request.dtype or common_pb2.DTYPE_FLOAT32
        if request.all_rows:
            ids, rows = job.export(request.table)
            yield convert.lookup_header(rows, dtype, job.version)
            yield from framing.frames(memoryview(ids.numpy().tobytes()), chunk_bytes)
        else:
            ids = convert.lookup_ids(request.ids)
            itemsize = wire.itemsize(dtype)  # INVALID_ARGUMENT for an unknown dtype
            rows = job.lookup(request.table, ids, peek=request.peek, itemsize=itemsize)
            yield convert.lookup_header(rows, dtype, job.version)
        yield from framing.frames(wire.encode(rows.reshape(-1), dtype), chunk_bytes)

    @grpc_errors
    def GetJobStats(
        self, request: ps_pb2.JobStatsRequest, context: grpc.ServicerContext
    ) -> common_pb2.ShardJobStats:
        return convert.job_stats(self._shard.job(request.job_id).stats(), self.advertise)

    @grpc_errors
    def DropJob(
        self, request: ps_pb2.DropJobRequest, context: grpc.ServicerContext
    ) -> ps_pb2.DropJobReply:
        self._shard.drop(request.job_id)
        return ps_pb2.DropJobReply()

    # --- live re-layout (pscluster.server.layout_gate) ---

    @grpc_errors
    def HoldJob(
        self, request: ps_pb2.HoldJobRequest, context: grpc.ServicerContext
    ) -> ps_pb2.HoldJobReply:
        action = convert.hold_action(request.action)
        status = self._shard.hold_job(request.job_id, action, request.layout_generation)
        return convert.hold_reply(status)

    @grpc_errors
    def ExportJob(
        self, request: ps_pb2.ExportJobRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.StateChunk | bytes]:
        chunk_bytes = self._chunk_bytes(request.chunk_bytes)
        if request.ranges:  # raw, framed by hand as StateChunk.range_data (one copy)
            ranges = [(r.start, r.length) for r in request.ranges]
            names = list(request.dense_names)
            job_id, generation = request.job_id, request.layout_generation
            for view in self._shard.export_ranges(job_id, generation, ranges, names):
                yield from framing.frames(view, chunk_bytes)
            return
        if request.HasField("rows_for"):
            rows_for, generation = request.rows_for, request.layout_generation
            state = memoryview(
                self._shard.export_rows(request.job_id, generation, rows_for.shards, rows_for.index)
            )
        else:
            state = memoryview(self._shard.export_job(request.job_id, skeleton=request.skeleton))
        for offset in range(0, len(state), chunk_bytes):
            yield ps_pb2.StateChunk(data=bytes(state[offset : offset + chunk_bytes]))

    @grpc_errors
    def AdoptJob(
        self,
        request_iterator: Iterator[ps_pb2.AdoptJobChunk | memoryview],
        context: grpc.ServicerContext,
    ) -> ps_pb2.AdoptJobReply:
        first = next(request_iterator, None)
        if not isinstance(first, ps_pb2.AdoptJobChunk) or first.WhichOneof("part") != "header":
            raise InvalidArgument("an AdoptJob stream must start with its header, then data chunks")
        header = first.header
        data = _data(request_iterator, "AdoptJob", "header")
        generation, size = header.layout_generation, header.state_bytes
        if header.restore_retired:
            if next(data, None) is not None:
                raise InvalidArgument("an AdoptJob that restores the retired copy carries no state")
            job = self._shard.restore_job(header.job_id, generation)
        else:
            segments = [Segment(s.start, s.length, s.local, s.source) for s in header.segments]
            fetch = self.peers.reader(header.job_id, header.source_generation)
            rows = [RowSource(t.address, t.local) for t in header.table_sources]
            fetch_rows = self.peers.rows_reader(header.job_id, header.source_generation)
            job, rows_bytes = self._shard.adopt_job(
                header.job_id, generation, size, data, segments, fetch, rows, fetch_rows
            )
            return ps_pb2.AdoptJobReply(version=job.version, rows_bytes=rows_bytes)
        return ps_pb2.AdoptJobReply(version=job.version)

    def _chunk_bytes(self, requested: int) -> int:
        if requested == 0:
            return self._settings.chunk_bytes
        limit = self._settings.max_message_bytes - _CHUNK_OVERHEAD
        if requested > limit:
            raise InvalidArgument(
                f"chunk_bytes {requested} exceeds the message limit; use at most {limit} "
                "(or 0 for the server's default)"
            )
        return requested

    def _wait_budget(self, context: grpc.ServicerContext) -> float:
        budget = self._settings.pull_wait_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - _REPLY_MARGIN_SECONDS)
        return max(0.0, budget)


def _data(
    messages: Iterator[ps_pb2.InitJobChunk | memoryview]
    | Iterator[ps_pb2.PushChunk | memoryview]
    | Iterator[ps_pb2.AdoptJobChunk | memoryview],
    rpc: str,
    first: str,
) -> Iterator[bytes | memoryview]:
    """The payload bytes of a stream's remaining messages, which must all be data chunks."""
    for message in messages:
        if isinstance(message, memoryview):  # framed data, parsed without a copy
            yield message
        elif message.WhichOneof("part") == "data":
            yield message.data
        else:
            raise InvalidArgument(f"{rpc} stream has a second {first}; only data chunks may follow")


def add_to_server(servicer: ParameterServerServicer, server: grpc.Server) -> None:
    """Register the service like the generated ``add_ParameterServerServicer_to_server``, but
    with data chunks framed and parsed by :mod:`pscluster.server.framing` (no protobuf copies).
    """
    handlers = {
        "InitJob": grpc.stream_unary_rpc_method_handler(
            servicer.InitJob,
            request_deserializer=framing.parser(ps_pb2.InitJobChunk.FromString),
            response_serializer=ps_pb2.InitJobReply.SerializeToString,
        ),
        "SetMembers": grpc.unary_unary_rpc_method_handler(
            servicer.SetMembers,
            request_deserializer=ps_pb2.SetMembersRequest.FromString,
            response_serializer=ps_pb2.SetMembersReply.SerializeToString,
        ),
        "SetConsistency": grpc.unary_unary_rpc_method_handler(
            servicer.SetConsistency,
            request_deserializer=ps_pb2.SetConsistencyRequest.FromString,
            response_serializer=ps_pb2.SetConsistencyReply.SerializeToString,
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=ps_pb2.PullRequest.FromString,
            response_serializer=framing.serializer,
        ),
        "Push": grpc.stream_unary_rpc_method_handler(
            servicer.Push,
            request_deserializer=framing.parser(ps_pb2.PushChunk.FromString),
            response_serializer=ps_pb2.PushReply.SerializeToString,
        ),
        "Lookup": grpc.unary_stream_rpc_method_handler(
            servicer.Lookup,
            request_deserializer=ps_pb2.LookupRequest.FromString,
            response_serializer=framing.serializer,
        ),
        "GetJobStats": grpc.unary_unary_rpc_method_handler(
            servicer.GetJobStats,
            request_deserializer=ps_pb2.JobStatsRequest.FromString,
            response_serializer=common_pb2.ShardJobStats.SerializeToString,
        ),
        "DropJob": grpc.unary_unary_rpc_method_handler(
            servicer.DropJob,
            request_deserializer=ps_pb2.DropJobRequest.FromString,
            response_serializer=ps_pb2.DropJobReply.SerializeToString,
        ),
        "HoldJob": grpc.unary_unary_rpc_method_handler(
            servicer.HoldJob,
            request_deserializer=ps_pb2.HoldJobRequest.FromString,
            response_serializer=ps_pb2.HoldJobReply.SerializeToString,
        ),
        "ExportJob": grpc.unary_stream_rpc_method_handler(
            servicer.ExportJob,
            request_deserializer=ps_pb2.ExportJobRequest.FromString,
            response_serializer=framing.serializer,
        ),
        "AdoptJob": grpc.stream_unary_rpc_method_handler(
            servicer.AdoptJob,
            request_deserializer=framing.parser(ps_pb2.AdoptJobChunk.FromString),
            response_serializer=ps_pb2.AdoptJobReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Also as registered methods, which the generated stubs call by default (a faster path).
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
