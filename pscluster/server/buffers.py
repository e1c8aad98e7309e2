"""Receiving a push's payload into a reused buffer, and checking it.

Fresh memory is what made a shard slow: the first touch of every page of a new buffer faults,
and on these machines a copy into a fresh 64 MB buffer took ~47 ms against ~16 ms into a reused
one -- more than the gRPC transfer of those 64 MB takes. So each job keeps the buffer it
received the last push into (and :mod:`pscluster.server.snapshots` the copies it sent pulls
from) and uses it again.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import torch

from pscluster.compression import Compressor
from pscluster.errors import InvalidArgument
from pscluster.transport import wire
from pscluster.v1 import common_pb2

T = TypeVar("T")
_TORCH_DTYPES: dict[int, torch.dtype] = {
    common_pb2.DTYPE_UNSPECIFIED: torch.float32,
    common_pb2.DTYPE_FLOAT32: torch.float32,
    common_pb2.DTYPE_FLOAT16: torch.float16,
    common_pb2.DTYPE_BFLOAT16: torch.bfloat16,
}


class Pool(Generic[T]):
    """At most ``keep`` idle buffers made by ``make``; more are made when many are in use."""

    def __init__(self, make: Callable[[], T], keep: int = 1) -> None:
        self._make = make
        self._keep = keep
        self._idle: list[T] = []
        self._lock = threading.Lock()

    def take(self) -> T:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._make()

    def give(self, item: T) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(item)


def wire_torch_dtype(dtype: int) -> torch.dtype:
    """The torch dtype of a wire dtype (InvalidArgument if unknown)."""
    wire.itemsize(dtype)
    return _TORCH_DTYPES[dtype]


def receive_gradient(
    length: int,
    dtype: int,
    chunks: Iterable[bytes | memoryview],
    buffer: bytearray | None,
    bucket_bytes: int = 0,
) -> torch.Tensor:
    """A push's payload as a float32 tensor: float32 is received into ``buffer`` (reused, so
    the tensor is only good until the buffer's next use), in order or (``bucket_bytes``) in
    buckets last first; half precision into a new buffer, then converted."""
    if buffer is None:
        owned = bytearray(length * wire.itemsize(dtype))
        wire.fill(owned, chunks)
        return wire.decode(owned, dtype, length)
    if bucket_bytes:
        wire.fill_buckets_last_first(buffer, chunks, bucket_bytes)
    else:
        wire.fill(buffer, chunks)
    return torch.frombuffer(buffer, dtype=torch.float32) if buffer else torch.empty(0)


def is_float32(dtype: int) -> bool:
    return wire_torch_dtype(dtype) == torch.float32


def all_finite(values: torch.Tensor) -> bool:
    # A sum is finite only if every term is (NaN and Inf propagate through addition), so one
    # cheap reduction clears nearly every gradient; only an overflowing sum needs the exact,
    # elementwise test.
    if math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def receive_compressed(
    codec: Compressor, length: int, payload_bytes: int, chunks: Iterable[bytes | memoryview]
) -> torch.Tensor:
    """A compressed push's payload decoded to ``length`` float32 values.

    The payload must be exactly the announced size (the limit was checked on the header), and
    the codec refuses anything malformed with InvalidArgument before any value is used.
    """
    owned = bytearray(payload_bytes)
    wire.fill(owned, chunks)
    values = codec.decompress(owned, length)
    if values.shape != (length,):
        raise InvalidArgument(
            f"{codec.name} payload decoded to {values.numel()} values, not {length}"
        )
    return values
