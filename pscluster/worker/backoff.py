"""Waiting between retries: exponential, capped, jittered, and cut short by a stop event.

Every retry loop of the worker goes through one :class:`Backoff`, so that an outage of the
coordinator or a shard costs a few calls per second at most (never a spin) and many workers
coming back together do not knock on the same door in step.
"""

from __future__ import annotations

import random
import threading


class Backoff:
    """``first``, then x``factor`` per failure up to ``cap`` seconds, each +-``jitter``."""

    def __init__(
        self, first: float = 0.1, cap: float = 5.0, factor: float = 2.0, jitter: float = 0.2
    ) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first ({first}) <= cap ({cap}) seconds")
        if factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"backoff needs factor >= 1 ({factor}) and 0 <= jitter < 1 ({jitter})")
        self.first = first
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._next = first

    def reset(self) -> None:
        """A call went through: the next failure waits ``first`` again."""
        self._next = self.first

    def delay(self) -> float:
        """The wait before the next attempt (and grow the one after)."""
        base = self._next
        self._next = min(self._next * self.factor, self.cap)
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay; True if ``stop`` was set meanwhile (give up)."""
        seconds = self.delay()
        if stop is None:
            stop = threading.Event()
        return stop.wait(seconds)
