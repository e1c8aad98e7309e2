"""Arrays that take memory page by page as their rows are first written.

A dynamic table does not know how many rows it will hold. Growing arrays by doubling (as a
list does) leaves up to half of each array allocated and unused, which for embedding rows is
most of the memory a row costs. Instead a table's per-row arrays are views of anonymous
memory mapped without a swap reservation (``MAP_NORESERVE``): the kernel gives a page only
when it is first written, so an array reserved for far more rows than it holds costs the
rows it holds (to a 4 KiB page) and the reservation costs address space alone. Reading an
unwritten page reads zeros without taking memory.

Growth past a reservation takes a reservation ``GROWTH`` times larger and copies the rows in
use: rare (1M, 8M, 64M, ... rows), and the only time both copies are resident.

Where the kernel does not overcommit (``vm.overcommit_memory=2``) the mapping counts against
the commit limit as an ordinary allocation would; memory is still only used where written.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np
import numpy.typing as npt

# Python 3.11's mmap module lacks the constant; its value on Linux (on other systems the
# mapping is an ordinary one, still filled lazily where the system does so).
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)
FIRST_RESERVATION = 1 << 20  # rows; virtual only, so generous
GROWTH = 8


def lazy_zeros(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A writable zero array of `shape` whose pages are taken when first written. It keeps
    its mapping alive; the memory returns when the last view of it goes."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    try:
        buffer = mmap.mmap(-1, max(1, count * dt.itemsize), flags=flags)
    except OSError as e:  # an address-space limit (ulimit -v) or a strict commit limit
        raise MemoryError(f"cannot map {count * dt.itemsize} bytes: {e}") from None
    return np.frombuffer(buffer, dtype=dt, count=count).reshape(shape)


def reservation(needed: int, held: int = 0) -> int:
    """Rows to reserve for `needed` rows: the `held` reservation if enough, else the first
    of FIRST_RESERVATION * GROWTH**k that is."""
    if held > 0 and needed <= held:
        return held
    size = FIRST_RESERVATION
    while size < needed:
        size *= GROWTH
    return size


def regrown(array: np.ndarray, rows: int, used: int) -> np.ndarray:
    """`array` if it has `rows` rows, else a larger lazy array with its first `used` rows."""
    size = reservation(rows, array.shape[0])
    if size == array.shape[0]:
        return array
    grown = lazy_zeros((size, *array.shape[1:]), array.dtype)
    grown[:used] = array[:used]
    return grown
