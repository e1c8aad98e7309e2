"""The one way to open a client channel: message limits, keepalive and retries on UNAVAILABLE."""

from __future__ import annotations

import json

import grpc

from pscluster.config import Settings

# gRPC retries an RPC transparently when the server is briefly unreachable (a restart, a
# connection reset). Only UNAVAILABLE is retried: it means nothing was processed.
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
            }
        ]
    }
)


def open_channel(address: str, settings: Settings | None = None) -> grpc.Channel:
    settings = settings or Settings()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
    ]
    return grpc.insecure_channel(address, options=options)


def wait_ready(channel: grpc.Channel, timeout: float) -> None:
    """Block until the channel connects, or raise grpc.FutureTimeoutError."""
    grpc.channel_ready_future(channel).result(timeout=timeout)
