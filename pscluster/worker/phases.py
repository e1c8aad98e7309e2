"""Where a window's wall time goes: pull, wait, forward, backward, push, other.

Each phase is the time the worker's training thread spent *blocked* in it, so the phases of a
window add up to its wall time and overlapped work costs nothing: with bucketed pushes
(:mod:`pscluster.worker.overlap`) the bytes of a push travel while backward still runs, and
``push`` is only what is left to wait for once backward is done. That is the figure that tells
whether the network or the computation sets the step time.

- ``pull``: receiving the parameters, less ``wait``;
- ``wait``: the shards held the pull for the consistency mode (a sync barrier, an ssp bound);
- ``forward`` and ``backward``: the model's own computation (loss included in forward);
- ``push``: encoding the update and waiting for the shards' answers;
- ``other``: the rest (reading the batch, flattening the gradient, bookkeeping).

The worker sends the sums with its lease progress; the coordinator keeps a short timeline of
them per job (:mod:`pscluster.coordinator.timeline`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("pull", "wait", "forward", "backward", "push", "other")


class PhaseClock:
    """Seconds per phase of the windows timed so far (``other`` is filled in by ``close``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def move(self, seconds: float, source: str, target: str) -> None:
        """Count ``seconds`` of ``source`` as ``target`` (a pull's part that was a wait)."""
        moved = min(seconds, self.seconds[source])
        self.seconds[source] -= moved
        self.seconds[target] += moved

    def close(self, wall: float) -> dict[str, float]:
        """The phases of a window whose wall time was ``wall``; ``other`` is what the named
        phases do not account for. Starts the next window from zero."""
        timed = sum(v for k, v in self.seconds.items() if k != "other")
        out = dict(self.seconds)
        out["other"] += max(0.0, wall - timed - out["other"])
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return out
