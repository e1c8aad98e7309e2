"""The streaming calls of a shard, with data chunks framed and parsed by hand.

InitJob, Push and AdoptJob send, Pull and Lookup receive, tensors (or a job's state) as ~1 MB
data chunks built and read without protobuf's two copies of every byte
(:mod:`pscluster.transport.framing`); a float32 pull is received straight into the memory of
the tensor it is for. Control messages (the config, the headers) still go through protobuf.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import grpc
import torch

from pscluster.errors import InvalidArgument
from pscluster.shard_client.errors import ShardError
from pscluster.transport import framing, wire
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

SERVICE = "/pscluster.v1.ParameterServer/"
Payload = bytes | bytearray | memoryview
_FLOAT32 = (common_pb2.DTYPE_UNSPECIFIED, common_pb2.DTYPE_FLOAT32)


class Streams:
    """The streaming multicallables of one shard's channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.pull = channel.unary_stream(
            SERVICE + "Pull",
            request_serializer=ps_pb2.PullRequest.SerializeToString,
            response_deserializer=framing.parser(ps_pb2.PullChunk.FromString),
        )
        self.push = channel.stream_unary(
            SERVICE + "Push",
            request_serializer=framing.serializer,
            response_deserializer=ps_pb2.PushReply.FromString,
        )
        self.lookup = channel.unary_stream(
            SERVICE + "Lookup",
            request_serializer=ps_pb2.LookupRequest.SerializeToString,
            response_deserializer=framing.parser(ps_pb2.PullChunk.FromString),
        )
        self.init = channel.stream_unary(
            SERVICE + "InitJob",
            request_serializer=framing.serializer,
            response_deserializer=ps_pb2.InitJobReply.FromString,
        )
        # ExportJob of raw ranges: each chunk as serialized (an AdoptJob data chunk as it is).
        self.export_ranges = channel.unary_stream(
            SERVICE + "ExportJob",
            request_serializer=ps_pb2.ExportJobRequest.SerializeToString,
            response_deserializer=bytes,
        )
        self.adopt = channel.stream_unary(
            SERVICE + "AdoptJob",
            request_serializer=framing.serializer,
            response_deserializer=ps_pb2.AdoptJobReply.FromString,
        )


def read_pull(
    address: str,
    responses: Iterable[ps_pb2.PullChunk | memoryview],
    values: torch.Tensor,
    buffers: torch.Tensor,
    progress: Callable[[int], None] | None = None,
) -> ps_pb2.PullHeader:
    """Receive a pull stream into ``values`` (float32, the shard's range) and ``buffers``
    (float64, its buffer range); the header. ShardError if the shard sent something else.
    ``progress`` is told the bytes of ``values`` in place so far, after each float32 chunk."""
    stream = iter(responses)
    first = next(stream, None)
    if not isinstance(first, ps_pb2.PullChunk) or first.WhichOneof("part") != "header":
        raise ShardError(address, grpc.StatusCode.INTERNAL, "a pull stream began without header")
    header = first.header
    if header.length != values.numel():
        raise ShardError(
            address,
            grpc.StatusCode.INTERNAL,
            f"pull sent {header.length} values; the job's plan gives it {values.numel()}",
        )
    try:
        if header.dtype in _FLOAT32:
            chunks = _payloads(address, stream)
            wire.fill(
                wire.byte_view(values), chunks if progress is None else _counted(chunks, progress)
            )
        else:
            received = bytearray(header.length * wire.itemsize(header.dtype))
            wire.fill(received, _payloads(address, stream))
            values.copy_(wire.decode(received, header.dtype, header.length))
        if len(header.buffers) != buffers.numel() * 8:
            raise InvalidArgument(
                f"{len(header.buffers)} bytes of buffers, expected {buffers.numel()} float64"
            )
        if buffers.numel():
            buffers.copy_(wire.decode_float64(header.buffers))
    except InvalidArgument as e:
        raise ShardError(address, grpc.StatusCode.INTERNAL, f"malformed pull: {e}") from None
    return header


def _payloads(
    address: str, stream: Iterator[ps_pb2.PullChunk | memoryview]
) -> Iterator[bytes | memoryview]:
    for chunk in stream:
        if isinstance(chunk, memoryview):  # framed data, parsed without a copy
            yield chunk
        elif chunk.WhichOneof("part") == "data":
            yield chunk.data
        else:
            raise ShardError(address, grpc.StatusCode.INTERNAL, "a pull sent a second header")


def _counted(
    chunks: Iterator[bytes | memoryview], progress: Callable[[int], None]
) -> Iterator[bytes | memoryview]:
    """``chunks`` unchanged; after each is copied in (the next is asked for), the total."""
    total = 0
    for chunk in chunks:
        yield chunk
        total += len(chunk)
        progress(total)


def push_messages(
    header: ps_pb2.PushHeader, payload: Payload, chunk_bytes: int, rows: Payload = b""
) -> Iterator[ps_pb2.PushChunk | bytes]:
    """A Push stream: the header, then the payload framed in chunks (each copied once, while
    the previous one is on the wire), then the row blocks the header announces."""
    yield ps_pb2.PushChunk(header=header)
    yield from framing.frames(memoryview(payload).cast("B"), chunk_bytes)
    yield from framing.frames(memoryview(rows).cast("B"), chunk_bytes)


def read_lookup(
    address: str, responses: Iterable[ps_pb2.PullChunk | memoryview], count: int
) -> torch.Tensor:
    """Receive a Lookup stream of ``count`` rows as a float32 (count, dim) tensor."""
    return read_rows(address, responses, count)[1]


def read_rows(
    address: str, responses: Iterable[ps_pb2.PullChunk | memoryview], count: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Receive a Lookup stream: the ``count`` rows asked for by id, or (``count`` None) an
    export of every row a shard holds, whose int64 ids come before the rows. (ids, float32
    (rows, dim)); the ids are empty for a lookup by id."""
    stream = iter(responses)
    first = next(stream, None)
    if not isinstance(first, ps_pb2.PullChunk) or first.WhichOneof("part") != "header":
        raise ShardError(address, grpc.StatusCode.INTERNAL, "a lookup stream began without header")
    header = first.header
    if count is not None and header.rows != count:
        raise ShardError(
            address, grpc.StatusCode.INTERNAL, f"asked for {count} rows, got {header.rows}"
        )
    id_bytes = 0 if count is not None else header.rows * 8
    received = bytearray(id_bytes + header.rows * header.dim * wire.itemsize(header.dtype))
    try:
        wire.fill(received, _payloads(address, stream))
        values = received if not id_bytes else received[id_bytes:]
        rows = wire.decode(values, header.dtype, header.rows * header.dim)
    except InvalidArgument as e:
        raise ShardError(address, grpc.StatusCode.INTERNAL, f"malformed lookup: {e}") from None
    ids = torch.zeros(0, dtype=torch.int64)
    if id_bytes:
        ids = torch.frombuffer(received, dtype=torch.int64, count=header.rows).clone()
    return ids, rows.reshape(header.rows, header.dim)


def init_messages(
    config: ps_pb2.ShardJobConfig, values: torch.Tensor, chunk_bytes: int
) -> Iterator[ps_pb2.InitJobChunk | bytes]:
    """An InitJob stream: the config, then the float32 values framed in chunks."""
    yield ps_pb2.InitJobChunk(config=config)
    yield from framing.frames(wire.encode(values), chunk_bytes)
