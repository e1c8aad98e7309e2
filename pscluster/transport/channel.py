"""The one way to open a client channel: message limits, keepalive, retries on UNAVAILABLE,
TLS and the caller's token (see :mod:`pscluster.transport.tls` and :mod:`.auth`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from pscluster.config import Settings
from pscluster.transport import tls
from pscluster.transport.auth import TokenInterceptor, caller_token
from pscluster.v1 import coordinator_pb2, parameter_server_pb2


def _server_streaming_methods() -> list[dict[str, str]]:
    """Every pscluster.v1 method whose server streams its reply (Pull, FetchModel, ...)."""
    names = []
    for module in (coordinator_pb2, parameter_server_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names += [
                {"service": service.full_name, "method": method.name}
                for method in service.methods
                if method.server_streaming
            ]
    return names


# gRPC retries an RPC transparently when the server is briefly unreachable (a restart, a
# connection reset). Only UNAVAILABLE is retried; the calls that change state are idempotent
# by their ids (a push's seq, a lease's id), so a retry of one that was processed is harmless.
# Server-streaming calls are left out: with a retry policy, grpcio 1.85 leaves such a call
# blocked past its deadline, forever, once its server is killed while the call waits (a pull
# at a sync barrier); tests/transport/test_channel.py keeps that from coming back. A worker
# retries its pulls itself, with backoff; a failed fetch is reported to its caller.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            },
            {"name": _server_streaming_methods(), "waitForReady": False},
        ]
    }
)


def open_channel(
    address: str,
    settings: Settings | None = None,
    *,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``address``: TLS when the settings name a CA or a certificate, and every
    call carrying the caller's token (``PSC_TOKEN``, else the admin token) when there is one.

    ``extra_options`` are added to the standard ones (e.g. a shorter reconnect backoff).
    Raises ValueError if a token or TLS file is missing or unusable.
    """
    settings = settings or Settings()
    token = caller_token(settings)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
        # Reconnect soon after a server comes back (a restarted coordinator or shard): gRPC's
        # default backoff grows to two minutes, longer than any restart here takes.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        *extra_options,
    ]
    channel = tls.dial(address, settings, options)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, TokenInterceptor(token))


def wait_ready(channel: grpc.Channel, timeout: float) -> None:
    """Block until the channel connects, or raise grpc.FutureTimeoutError."""
    grpc.channel_ready_future(channel).result(timeout=timeout)
