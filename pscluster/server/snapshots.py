"""What pulls stream from: snapshots of a job's values, shared and copied only on write."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from pscluster.server.buffers import wire_torch_dtype
from pscluster.transport import wire

T = TypeVar("T")


class _Snapshot:
    """The values of one version in one wire dtype: a private copy, or (float32 only) the live
    vector itself until an update is about to change it."""

    def __init__(self, version: int, values: torch.Tensor, dtype: int, private: bool) -> None:
        self.version = version
        self.dtype = dtype
        self.refs = 0
        self.lock = threading.Lock()  # readers' chunk copies vs. the switch to a private copy
        self._set(values, private)

    def _set(self, values: torch.Tensor, private: bool) -> None:
        self.values = values
        self.view = wire.encode(values, self.dtype)
        self.private = private

    def make_private(self, buffer: torch.Tensor) -> None:
        with self.lock:
            buffer.copy_(self.values)
            self._set(buffer, private=True)


class SnapshotLease:
    """A pull's hold on a snapshot; ``release`` it when the stream is done."""

    def __init__(self, snap: _Snapshot, release: Callable[[_Snapshot], None]) -> None:
        self._snap = snap
        self._release = release
        self.nbytes = len(snap.view)

    def chunks(self, chunk_bytes: int, copy: Callable[[memoryview], T]) -> Iterator[T]:
        """The payload in pieces of ``chunk_bytes``, each passed through ``copy``, which must
        copy: the memory it is shown may change once it returns."""
        snap = self._snap
        for offset in range(0, self.nbytes, chunk_bytes):
            with snap.lock:
                piece = copy(snap.view[offset : offset + chunk_bytes])
            yield piece

    def release(self) -> None:
        self._release(self._snap)


class SnapshotCache:
    """What pulls stream from, so that the values need not be copied for each pull.

    A float32 pull reads the live vector, and only if an update comes while pulls of the old
    version are still streaming are the old values copied for them (copy on write): a worker
    usually finishes its pull before anyone's next push, so most pulls copy nothing. Pulls of
    one version share one snapshot (a sync step's workers all pull the same version), and
    half-precision pulls share one converted copy per version.

    ``take`` and ``before_update`` run under the job's lock; leases are released from the
    streaming threads, so the cache has its own lock.
    """

    def __init__(self, length: int) -> None:
        self._length = length
        self._current: dict[torch.dtype, _Snapshot] = {}
        self._spare: dict[torch.dtype, torch.Tensor] = {}  # one reusable buffer per dtype
        self._lock = threading.Lock()

    def take(self, values: torch.Tensor, version: int, dtype: int) -> SnapshotLease:
        torch_dtype = wire_torch_dtype(dtype)
        with self._lock:
            snap = self._current.get(torch_dtype)
            if snap is None or snap.version != version:
                if snap is not None and snap.refs == 0:
                    self._recycle(snap)
                if torch_dtype == values.dtype:
                    snap = _Snapshot(version, values, dtype, private=False)
                else:
                    buffer = self._buffer(torch_dtype)
                    buffer.copy_(values)  # converted to the wire dtype on the way
                    snap = _Snapshot(version, buffer, dtype, private=True)
                self._current[torch_dtype] = snap
            snap.refs += 1
        return SnapshotLease(snap, self._release)

    def before_update(self) -> None:
        """The live values are about to change: give pulls still reading them a copy."""
        with self._lock:
            for torch_dtype, snap in list(self._current.items()):
                if snap.private:
                    continue
                if snap.refs:
                    snap.make_private(self._buffer(torch_dtype))
                else:
                    del self._current[torch_dtype]

    def _release(self, snap: _Snapshot) -> None:
        with self._lock:
            snap.refs -= 1
            if snap.refs == 0 and self._current.get(snap.values.dtype) is not snap:
                self._recycle(snap)

    def _buffer(self, torch_dtype: torch.dtype) -> torch.Tensor:
        spare = self._spare.pop(torch_dtype, None)
        return spare if spare is not None else torch.empty(self._length, dtype=torch_dtype)

    def _recycle(self, snap: _Snapshot) -> None:
        if snap.private:
            self._spare.setdefault(snap.values.dtype, snap.values)
