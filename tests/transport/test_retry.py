"""Retries: waits grow, cap, jitter and stop on request; the helper retries only what it is
told to, within its deadline."""

from __future__ import annotations

import threading
import time

import pytest

from pscluster.transport.retry import Backoff, RetryPolicy, Stopped, retry


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


class Passing(Exception):
    pass


def test_retry_goes_on_through_passing_failures_then_returns() -> None:
    # Prepare: a call that fails twice
    failures = [Passing("down"), Passing("still down")]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "up"

    policy = RetryPolicy(lambda e: isinstance(e, Passing), first=0.01, cap=0.02)

    # Execute / Assert
    assert retry(call, policy, what="call") == "up"
    assert not failures


def test_retry_raises_at_once_what_is_not_retryable() -> None:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise ValueError("an answer, not an outage")

    with pytest.raises(ValueError, match="an answer"):
        retry(call, RetryPolicy(lambda e: isinstance(e, Passing)), what="call")
    assert len(calls) == 1


def test_retry_gives_up_with_the_last_failure_at_its_deadline() -> None:
    def call() -> None:
        raise Passing("down")

    started = time.monotonic()
    with pytest.raises(Passing):
        retry(call, RetryPolicy(lambda e: True, first=0.05, cap=0.05, deadline=0.3), what="c")
    assert 0.2 <= time.monotonic() - started < 1.0


def test_retry_stops_when_asked_and_check_can_abandon() -> None:
    stop = threading.Event()
    stop.set()

    def call() -> None:
        raise Passing("down")

    with pytest.raises(Stopped):
        retry(call, RetryPolicy(lambda e: True, first=5.0, cap=5.0), what="c", stop=stop)

    def gone() -> None:
        raise LookupError("the lease is gone")

    with pytest.raises(LookupError):
        retry(call, RetryPolicy(lambda e: True), what="c", check=gone)
