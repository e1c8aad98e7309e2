"""The coordinator's calls for a live re-layout (ScaleShards), one shard at a time.

HoldJob holds a job's pulls on a shard (and releases them, tells the shard the job moved, or
that the move is settled), ExportJob reads the held job's whole state (or its skeleton, or raw
ranges of its per-value tensors), AdoptJob installs a state cut for a shard (or takes back the
copy it retired). The state travels as a checkpoint image: :func:`state_from_bytes` and
:func:`state_to_bytes` (whose home is :mod:`pscluster.server.durability.checkpoint`) turn it
into tensors and JSON and back, for the coordinator to recut. Every failure is a
:class:`~pscluster.shard_client.errors.ShardError` naming the shard, raised.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import grpc

from pscluster.config import Settings
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.shard_client.errors import ShardError, shard_error
from pscluster.shard_client.streams import Streams
from pscluster.transport import framing
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

__all__ = ["Relay", "RelayoutCalls", "state_from_bytes", "state_to_bytes"]


class _Client(Protocol):
    """What the calls need of :class:`~pscluster.shard_client.ShardClient`."""

    settings: Settings
    timeout: float
    control_timeout: float

    def stub(self, address: str) -> ps_grpc.ParameterServerStub: ...

    def streams(self, address: str) -> Streams: ...


class RelayoutCalls:
    """Mixed into :class:`~pscluster.shard_client.ShardClient`."""

    def hold_job(
        self: _Client,
        address: str,
        job_id: str,
        action: ps_pb2.HoldAction.ValueType,
        layout_generation: int = 0,
    ) -> ps_pb2.HoldJobReply:
        """HOLD (poll it until every member is in ``waiting``), RELEASE, or MOVED to
        ``layout_generation``. HOLD and RELEASE check a nonzero ``layout_generation``
        against the job's here, as a pull does (LayoutMovedError if it is older)."""
        request = ps_pb2.HoldJobRequest(
            job_id=job_id, action=action, layout_generation=layout_generation
        )
        try:
            reply: ps_pb2.HoldJobReply = self.stub(address).HoldJob(
                request, timeout=self.control_timeout
            )
        except grpc.RpcError as e:
            raise shard_error(address, e) from None
        return reply

    def export_job(self: _Client, address: str, job_id: str, *, skeleton: bool = False) -> bytes:
        """The held job's whole state on the shard at ``address`` (FAILED_PRECONDITION unless
        held), or all of it but its per-value tensors (``skeleton``, which lists them): decode
        it with :func:`state_from_bytes`."""
        request = ps_pb2.ExportJobRequest(job_id=job_id, skeleton=skeleton)
        try:
            chunks = self.stub(address).ExportJob(request, timeout=self.timeout)
            return b"".join(chunk.data for chunk in chunks)
        except grpc.RpcError as e:
            raise shard_error(address, e) from None

    def export_rows(
        self: _Client, address: str, job_id: str, generation: int, shards: int, index: int
    ) -> bytes:
        """The rows of the job's tables that new shard ``index`` of ``shards`` owns, on the
        shard at ``address`` as it was at layout ``generation``, with their ids: an image of
        tensors (:func:`state_from_bytes`)."""
        request = ps_pb2.ExportJobRequest(
            job_id=job_id,
            layout_generation=generation,
            rows_for=ps_pb2.RowsFor(shards=shards, index=index),
        )
        try:
            chunks = self.stub(address).ExportJob(request, timeout=self.timeout)
            return b"".join(chunk.data for chunk in chunks)
        except grpc.RpcError as e:
            raise shard_error(address, e) from None

    def export_ranges(
        self: _Client,
        address: str,
        job_id: str,
        generation: int,
        ranges: Sequence[tuple[int, int]],
        dense: Sequence[tuple[str, int]],
    ) -> Relay:
        """Global ``(start, length)`` ``ranges`` of the job's per-value tensors ``dense``
        (name and bytes per value, in the order of its skeleton's listing) on the shard at
        ``address``, as it was at layout ``generation``, raw: read as the relay's payloads
        are (a shard adopting them reads them so, :mod:`pscluster.server.peer_ranges`)."""
        request = ps_pb2.ExportJobRequest(
            job_id=job_id,
            ranges=[ps_pb2.DenseRange(start=start, length=length) for start, length in ranges],
            dense_names=[name for name, _ in dense],
            layout_generation=generation,
        )
        call, timeout = self.streams(address).export_ranges, self.timeout
        return Relay(address, lambda: call(request, timeout=timeout))

    def adopt_job(
        self: _Client,
        address: str,
        job_id: str,
        layout_generation: int,
        state: bytes,
        segments: Sequence[ps_pb2.DenseSegment] = (),
        source_generation: int = 0,
        table_sources: Sequence[ps_pb2.TableSource] = (),
    ) -> ps_pb2.AdoptJobReply:
        """Install ``state`` (:func:`state_to_bytes`; its config's layout generation must be
        ``layout_generation``) on the shard at ``address``, replacing an older generation of
        the job there; durable once this returns. A skeleton state comes with the
        ``segments`` of its per-value tensors, each kept from the shard's own older copy
        (local) or read by the shard from its ``source`` (which holds the job at
        ``source_generation``); its tables' rows come from ``table_sources``, read by the
        shard as the segments are."""
        header = ps_pb2.AdoptJobHeader(
            job_id=job_id,
            layout_generation=layout_generation,
            state_bytes=len(state),
            segments=segments,
            source_generation=source_generation,
            table_sources=table_sources,
        )
        messages = itertools.chain(
            [ps_pb2.AdoptJobChunk(header=header)],
            framing.frames(memoryview(state), self.settings.chunk_bytes),
        )
        try:
            reply: ps_pb2.AdoptJobReply = self.streams(address).adopt(
                messages, timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise shard_error(address, e) from None
        return reply

    def restore_job(
        self: _Client, address: str, job_id: str, layout_generation: int
    ) -> ps_pb2.AdoptJobReply:
        """The shard at ``address`` takes back the copy of the job its last adoption
        replaced, under ``layout_generation`` (a move rolled back); durable once this
        returns. FAILED_PRECONDITION if it kept none."""
        header = ps_pb2.AdoptJobHeader(
            job_id=job_id, layout_generation=layout_generation, restore_retired=True
        )
        try:
            reply: ps_pb2.AdoptJobReply = self.streams(address).adopt(
                iter([ps_pb2.AdoptJobChunk(header=header)]), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise shard_error(address, e) from None
        return reply


class Relay:
    """One ExportJob stream of raw ranges, read as it arrives (never whole in memory) by
    the shard that adopts them; it keeps the source shard's error, so that the failure
    names the shard that failed."""

    def __init__(self, address: str, chunks: Callable[[], Iterable[bytes]]) -> None:
        self.address = address
        self._chunks = chunks
        self._error: ShardError | None = None

    def payloads(self) -> Iterator[memoryview]:
        """The raw bytes of the ranges, chunk by chunk, without a copy; a chunk without
        them, or the stream's failure, is kept as the source shard's error and raised."""
        try:
            for chunk in self._chunks():
                data = framing.data_of(chunk)
                if data is None:
                    self._error = ShardError(
                        self.address, grpc.StatusCode.INTERNAL, "a range chunk without its data"
                    )
                    raise self._error
                yield data
        except grpc.RpcError as e:
            self._error = shard_error(self.address, e)
            raise

    @property
    def error(self) -> ShardError | None:
        """The source shard's error, once reading from it failed."""
        return self._error
