"""Data chunks on the wire without protobuf's copies.

``InitJobChunk``, ``PullChunk`` and ``PushChunk`` are all ``oneof part { <control> = 1;
bytes data = 2; }``, so a data chunk on the wire is the tag byte 0x12 (field 2,
length-delimited), the payload length as a varint, and the payload. Building and parsing that
directly saves the two copies protobuf makes of every tensor byte (into the message, and out of
it again on ``.data``) -- on these machines each 64 MB copy costs about as much time as moving
the bytes through gRPC, so they decided whether a shard keeps up with a bare gRPC stream
(bench/transport.py). Control messages (config, header) still go through protobuf.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

DATA_TAG = 0x12


class _Message(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...


M = TypeVar("M")


def frame(payload: bytes | memoryview) -> bytes:
    """A serialized data chunk carrying ``payload`` (one copy of it)."""
    return b"".join((_varint_prefix(len(payload)), payload))


def frames(payload: memoryview, chunk_bytes: int) -> Iterator[bytes]:
    """``payload`` as serialized data chunks of at most ``chunk_bytes``, built lazily so that
    each is copied while the previous one is on the wire."""
    for offset in range(0, len(payload), chunk_bytes):
        yield frame(payload[offset : offset + chunk_bytes])


def data_of(raw: bytes) -> memoryview | None:
    """The payload of a serialized data-only chunk, without a copy; None for anything else
    (a control message, or a data chunk with other fields beside it: protobuf parses those)."""
    if not raw or raw[0] != DATA_TAG:
        return None
    length, offset, shift = 0, 1, 0
    while offset < len(raw) and shift < 64:
        byte = raw[offset]
        length |= (byte & 0x7F) << shift
        offset += 1
        shift += 7
        if not byte & 0x80:
            break
    else:
        return None
    if offset + length != len(raw):
        return None
    return memoryview(raw)[offset:]


def serializer(message: _Message | bytes) -> bytes:
    """Response serializer for streams that yield pre-framed chunks beside messages."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def parser(from_string: Callable[[bytes], M]) -> Callable[[bytes], M | memoryview]:
    """Request deserializer: a data chunk becomes a memoryview of its payload, anything else
    the message ``from_string`` parses."""

    def parse(raw: bytes) -> M | memoryview:
        data = data_of(raw)
        return from_string(raw) if data is None else data

    return parse


def _varint_prefix(length: int) -> bytes:
    out = bytearray([DATA_TAG])
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
