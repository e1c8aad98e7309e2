"""Retry waits grow, cap, jitter and stop on request (every retry loop of the worker)."""

from __future__ import annotations

import threading
import time

import pytest

from pscluster.worker.backoff import Backoff


def test_delays_double_up_to_the_cap_with_bounded_jitter() -> None:
    backoff = Backoff(0.1, 1.0, factor=2.0, jitter=0.2)
    delays = [backoff.delay() for _ in range(6)]
    for got, base in zip(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0], strict=True):
        assert base * 0.8 <= got <= base * 1.2
    backoff.reset()
    assert backoff.delay() <= 0.12


def test_a_set_stop_event_ends_the_wait_at_once() -> None:
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert Backoff(5.0, 5.0).wait(stop)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("first,cap", [(0.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_are_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(first, cap)
