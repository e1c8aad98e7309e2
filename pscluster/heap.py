"""A server process's memory: the garbage collector's full passes kept off the request path,
and large freed blocks given back to the system.

A server process imports torch, grpc and protobuf: about 200,000 container objects that live
as long as the process. CPython's full (generation 2) collection walks every one of them,
about 100 ms on a 2-core machine, every several seconds under load, and every RPC in flight
waits for it: at 500 simulated workers those pauses were a visible part of the coordinator's
AcquireTask tail (bench/coordinator_scale.py). Freezing what exists once the server is up
moves it to a permanent generation that collections skip (``gc.freeze``, as large Python web
services do); everything created afterwards is collected as usual.

C allocations are glibc's: :func:`return_large_blocks` stops it keeping large freed blocks in
per-thread arenas, where a shard's per-push temporaries piled up (see there).
"""

from __future__ import annotations

import ctypes
import gc
import logging
from functools import cache

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then exempt every surviving object from later collections.

    Call it once the process has imported what it keeps for life, before its server starts
    (a signal sent as soon as the port is announced must not find the process collecting).
    Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d objects alive at startup exempted from garbage collection", frozen)
    return frozen


# glibc's mallopt parameters (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses a fixed mmap threshold above HEAP_MAX_SIZE / 2 on 64-bit systems.
MAX_MMAP_THRESHOLD = 32 << 20


def return_large_blocks(threshold: int) -> bool:
    """Have the C allocator map every block of ``threshold`` bytes or more on its own, and
    unmap it when it is freed; False where it cannot be told (a C library without glibc's
    ``mallopt``).

    glibc raises its mmap threshold to the size of each mapped block freed, up to 32 MiB;
    from then on blocks below that come from per-thread arenas, which keep them once freed.
    A shard allocates blocks the size of its range on whichever gRPC thread handles a push
    (Adam's two temporaries, a second receive buffer while two pushes arrive at once, a
    checkpoint's copies): with a 30 MiB range (a dense 1M x 16 table over 2 shards) eight
    threads' arenas ended up holding two each, 0.5-0.85 GB of a 1.2-1.5 GB shard that no
    tensor used. A fixed threshold (which also ends the dynamic one) returns such blocks at
    once; blocks below it (gRPC's messages, ``threshold`` should stay above the largest)
    are still reused from the arenas, and ranges above 32 MiB were always mapped alone.
    """
    if not 0 < threshold <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"threshold must be in (0, {MAX_MMAP_THRESHOLD}] bytes, got {threshold}")
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The top of a heap is given back past twice the threshold, as glibc's own dynamic rule
    # does (left at its 128 KiB default, every freed message at the top would be trimmed
    # and faulted in again by the next).
    done: bool = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return done and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold) == 1)


def give_back_freed() -> None:
    """Returns the heap's free memory to the system (glibc's malloc_trim). After a rehash or
    a growth, whose temporaries are as large as the table's index, glibc would otherwise keep
    that memory in its free lists, resident: it raises its mmap threshold as large blocks are
    freed, so the next ones come from the heap, which fragments and does not shrink."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library this process runs on (None where it cannot be loaded)."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None
