"""Keep the garbage collector's full passes off the request path.

A server process imports torch, grpc and protobuf: about 200,000 container objects that live
as long as the process. CPython's full (generation 2) collection walks every one of them,
about 100 ms on a 2-core machine, every several seconds under load, and every RPC in flight
waits for it: at 500 simulated workers those pauses were a visible part of the coordinator's
AcquireTask tail (bench/coordinator_scale.py). Freezing what exists once the server is up
moves it to a permanent generation that collections skip (``gc.freeze``, as large Python web
services do); everything created afterwards is collected as usual.
"""

from __future__ import annotations

import gc
import logging

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
