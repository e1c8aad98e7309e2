"""Recording a call as a locust request: the documented way to load-test a non-HTTP system.

Locust only knows HTTP; for anything else its docs ("Testing other systems/protocols") wrap
the protocol library and fire ``environment.events.request`` after each call, with the call's
name, latency, size and exception. We time whole operations as a worker or a client sees them
(a pull of every shard's range, a push to every shard, one SDK call), not single gRPC
messages: the latency that matters is the one a training step waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from locust.env import Environment

T = TypeVar("T")
REQUEST_TYPE = "grpc"


class RequestRefused(Exception):
    """A call that returned, but with an answer a real caller would treat as a failure
    (e.g. a push the shard did not apply). Reported to locust as the request's exception."""


def record(
    environment: Environment,
    name: str,
    call: Callable[[], T],
    length: Callable[[T], int] | None = None,
    check: Callable[[T], str | None] | None = None,
) -> T | None:
    """Run ``call`` and fire one locust request for it; returns its result, None if it failed.

    ``length`` gives the bytes moved (locust's response_length). ``check`` returns a reason
    when a returned result is still a failure. Any exception counts as a failure and is not
    re-raised: a load test keeps going and reports failures, it does not stop at the first.
    """
    start = time.perf_counter()
    result: T | None = None
    exception: BaseException | None = None
    try:
        result = call()
        reason = check(result) if check is not None else None
        if reason is not None:
            exception = RequestRefused(reason)
    except Exception as e:  # every failure of the call is a failed request, whatever its type
        exception = e
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    environment.events.request.fire(  # type: ignore[no-untyped-call]
        request_type=REQUEST_TYPE,
        name=name,
        response_time=elapsed_ms,
        response_length=length(result) if length is not None and result is not None else 0,
        exception=exception,
        context={},
    )
    return None if exception is not None else result
