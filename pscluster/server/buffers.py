"""Reused buffers for a job's pushes and pulls.

Fresh memory is what made a shard slow: the first touch of every page of a new buffer faults,
and on these machines a copy into a fresh 64 MB buffer took ~47 ms against ~16 ms into a reused
one -- more than the gRPC transfer of those 64 MB takes. So each job keeps the buffers it
received pushes into and the snapshots it sent pulls from, and uses them again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from pscluster.transport import wire
from pscluster.transport.errors import InvalidArgument
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


def fill(buffer: bytearray, chunks: Iterable[bytes | memoryview]) -> None:
    """Copy a stream's chunks into ``buffer``; InvalidArgument unless they fill it exactly."""
    view = memoryview(buffer)
    filled = 0
    for chunk in chunks:
        end = filled + len(chunk)
        if end > len(buffer):
            raise InvalidArgument(f"stream carries more than the announced {len(buffer)} bytes")
        view[filled:end] = chunk
        filled = end
    if filled != len(buffer):
        raise InvalidArgument(f"stream ended after {filled} of the announced {len(buffer)} bytes")


@dataclass
class _Snapshot:
    version: int
    values: torch.Tensor
    refs: int = 0


@dataclass
class SnapshotLease:
    """A pull's read-only view of a snapshot; ``release`` it when the stream is done."""

    payload: memoryview
    _release: Callable[[], None] = field(repr=False)

    def release(self) -> None:
        self._release()


class SnapshotCache:
    """Copies of a job's values for pulls, per wire dtype: pulls of the same version share one
    copy (a sync step's workers all pull the same version), and a copy no pull reads any more
    is recycled for the next version.

    ``take`` runs under the job's lock (the values must not change during the copy); a lease
    is released from the streaming thread, so the cache has its own small lock.
    """

    def __init__(self, length: int) -> None:
        self._length = length
        self._current: dict[torch.dtype, _Snapshot] = {}
        self._spare: dict[torch.dtype, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, values: torch.Tensor, version: int, dtype: int) -> SnapshotLease:
        torch_dtype = wire_torch_dtype(dtype)
        with self._lock:
            snap = self._current.get(torch_dtype)
            if snap is None or snap.version != version:
                if snap is not None and snap.refs == 0:
                    self._spare.setdefault(torch_dtype, []).append(snap.values)
                spare = self._spare.get(torch_dtype)
                buffer = spare.pop() if spare else torch.empty(self._length, dtype=torch_dtype)
                buffer.copy_(values)  # converts to the wire dtype on the way
                snap = _Snapshot(version, buffer)
                self._current[torch_dtype] = snap
            snap.refs += 1
        return SnapshotLease(wire.encode(snap.values, dtype), lambda: self._release(snap))

    def _release(self, snap: _Snapshot) -> None:
        with self._lock:
            snap.refs -= 1
            current = self._current.get(snap.values.dtype)
            if snap.refs == 0 and current is not snap:
                spare = self._spare.setdefault(snap.values.dtype, [])
                if not spare:  # one spare per dtype bounds the memory kept
                    spare.append(snap.values)


def wire_torch_dtype(dtype: int) -> torch.dtype:
    """The torch dtype of a wire dtype (InvalidArgument if unknown)."""
    wire.itemsize(dtype)
    return _TORCH_DTYPES[dtype]
