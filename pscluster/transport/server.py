"""The one way to build a gRPC server: limits, keepalive, health, reflection, shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pscluster.config import Settings

log = logging.getLogger(__name__)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        # Tensors travel as chunks; a larger message is a client bug or an attack, and gRPC
        # answers it with RESOURCE_EXHAUSTED before buffering it.
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Workers hold long-lived channels that can sit idle while a barrier waits; allow their
        # keepalive pings rather than closing the connection with GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float | None = None) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_server(
    settings: Settings,
    port: int,
    register: Sequence[Callable[[grpc.Server], None]],
    service_names: Sequence[str],
) -> RunningServer:
    """Start a server on ``settings.host:port`` (0 picks a free port) with health and reflection.

    ``register`` are the generated ``add_XServicer_to_server`` calls bound to their servicers;
    ``service_names`` are the full names reported as SERVING by the health service.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_threads),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.grpc_threads * 4,
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{settings.host}:{port}")
    if bound == 0:
        raise RuntimeError(f"could not bind {settings.host}:{port}")
    server.start()
    for name in [*service_names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d", ", ".join(service_names), settings.host, bound)
    return RunningServer(server, bound, health_servicer)


def wait_for_termination(running: RunningServer, grace: float, on_stop: Callable[[], None]) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully (orchestrators send SIGTERM)."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    stop.wait()
    on_stop()
    running.stop(grace)
