"""Rows of one ``.npy`` shard, read with ``pread`` into the batch being built.

The shards are opened memory-mapped (their headers, shapes and dtypes, without reading
data), but rows are not read through the mapping: a page fault maps a whole page-cache
folio, up to megabytes on kernels with large folios, and the mapping keeps it; reading 2 GB
at random made a loader process hold 1.7 GB. A ``pread`` per run of consecutive rows copies
only the rows into the batch; the page cache is the kernel's and no process's RSS. Shards
small enough (labels) are read whole once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pscluster.errors import InvalidArgument

# A shard this small is read into memory whole (a label array: 8 bytes a row).
SMALL_BYTES = 16 << 20


class ShardRows:
    def __init__(self, path: Path, array: np.ndarray) -> None:
        self.path = path
        self.dtype = array.dtype
        self.row_shape = tuple(array.shape[1:])
        self.row_bytes = array.dtype.itemsize * math.prod(self.row_shape)
        self.offset = int(getattr(array, "offset", 0))
        # A Fortran-ordered array's rows are not contiguous bytes: read through the mapping.
        self.mapped = array if not array.flags.c_contiguous else None
        self.whole = np.array(array) if array.nbytes <= SMALL_BYTES else None
        self._fd: int | None = None
        self._pid = 0

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (ascending), as a new array."""
        if self.whole is not None:
            picked: np.ndarray = self.whole[rows]
            return picked
        if self.mapped is not None:
            return np.array(self.mapped[rows])
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        if len(rows) == 0 or self.row_bytes == 0:
            return out
        raw = out.reshape(len(rows), -1).view(np.uint8).reshape(len(rows), self.row_bytes)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        fd = self._descriptor()
        for first, end in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)], strict=True):
            want = (end - first) * self.row_bytes
            at = self.offset + int(rows[first]) * self.row_bytes
            target = memoryview(raw[first:end].data)
            if os.preadv(fd, [target], at) != want:
                raise InvalidArgument(
                    f"data source 'npy': {self.path} ended before row {int(rows[end - 1])}; "
                    "was it rewritten while the job ran?"
                )
        return out

    def _descriptor(self) -> int:
        """This process's descriptor (a loader process forked from the trainer opens its own
        on first use, so no offset or state is shared across the fork)."""
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC), pid
        return self._fd

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
