"""Trying a call again: the one helper for it, and which layer retries what.

Two layers retry, on different time scales, and nothing else loops:

- **the channel** (the service config in :mod:`pscluster.transport.channel`): unary and
  client-streaming calls whose request fits gRPC's retry buffer, on UNAVAILABLE, 5 attempts
  0.1-2 s apart within the call's own deadline. It rides out a reset connection or a server
  that is just restarting, invisibly to the caller.
- **:func:`retry`** (here): calls that must get through an outage longer than that, on what
  the caller's :class:`RetryPolicy` says, with a capped, jittered backoff until its deadline
  or until the caller gives up.

Where :func:`retry` is used, and on what:

- the worker's pulls and pushes to shards (``worker/trainer.py``): UNAVAILABLE (a shard
  restarting or cut off) and DEADLINE_EXCEEDED (a sync barrier not met within a pull's
  deadline: tried again at once), while the worker's lease stands. Server-streaming pulls
  are not retried by the channel at all (channel.py says why); large pushes exceed its retry
  buffer. A retried push reuses its seq and goes only to the shards that did not answer, so
  none applies it twice;
- the worker's calls to the coordinator that carry work (``worker/agent.py``): completing a
  lease on UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED (a coordinator restarting or
  overloaded), while the lease stands; registering and acquiring a task on any failure (but
  NOT_FOUND for AcquireTask: the worker registers again), until the worker stops.

Not retried here, on purpose: heartbeats (the next beat is the retry), progress reports (kept
and sent with the next report, after a backoff: ``worker/progress.py``), and every call the
coordinator makes to shards (each has a deadline; a failed membership change or
initialisation is sent again by the coordinator's own loops, which know whether it is still
wanted).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backoff:
    """``first``, then x``factor`` per failure up to ``cap`` seconds, each +-``jitter``: an
    outage costs a few calls per second at most (never a spin), and many clients coming back
    together do not knock on the same door in step."""

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


class Stopped(Exception):
    """:func:`retry` gave up because its ``stop`` was set; the last failure is its cause."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed call is worth making again, and how long to keep at it.

    ``retryable`` says which failures are passing; ``at_once`` which of those need no wait
    (the call's own deadline was the wait, e.g. a barrier not yet met). ``deadline`` bounds
    all attempts together (seconds, None: until stopped).
    """

    retryable: Callable[[Exception], bool]
    first: float = 0.1
    cap: float = 5.0
    deadline: float | None = None
    at_once: Callable[[Exception], bool] = lambda error: False


def period(seconds: float, spread: float = 0.25) -> float:
    """A periodic call's next interval: ``seconds`` shortened by up to ``spread`` of it, at
    random. Workers started together (a scale-up, a bench) would otherwise heartbeat in step
    forever, and a coordinator would take hundreds of them in the same millisecond; never
    longer than ``seconds``, so liveness timeouts keep their meaning."""
    return seconds * (1.0 - random.uniform(0.0, spread))


def retry(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    stop: threading.Event | None = None,
    check: Callable[[], None] = lambda: None,
    log_level: int = logging.DEBUG,
) -> T:
    """``call()`` until it returns, a failure is not retryable (raised as is), the deadline
    passes (the last failure is raised) or ``stop`` is set (:class:`Stopped`).

    ``check`` runs before every retry and may raise to abandon the call (e.g. the work the
    call was for was taken away). Each failure that is retried is logged at ``log_level``.
    """
    backoff = Backoff(policy.first, policy.cap)
    ends = None if policy.deadline is None else time.monotonic() + policy.deadline
    while True:
        try:
            return call()
        except Exception as error:
            if not policy.retryable(error):
                raise
            delay = 0.0 if policy.at_once(error) else backoff.delay()
            if ends is not None and time.monotonic() + delay >= ends:
                raise
            log.log(log_level, "%s failed (%s); trying again in %.2fs", what, error, delay)
            if stop is not None and stop.wait(delay):
                raise Stopped(f"{what}: stopped while retrying") from error
            if stop is None and delay:
                time.sleep(delay)
        check()
