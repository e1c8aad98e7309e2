"""The one way to build a gRPC server: limits, keepalive, auth, TLS, health, reflection."""

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
from pscluster.transport import tls
from pscluster.transport.access_control import AuthInterceptor
from pscluster.transport.auth import admin_token
from pscluster.transport.guard import DecodeGuard

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


def server_interceptors(settings: Settings) -> list[grpc.ServerInterceptor]:  # type: ignore[type-arg]
    """Every server's interceptors, in the order they run (the first sees a call first).

    Authentication comes first, so nothing else spends work on a call it will refuse.
    """
    interceptors: list[grpc.ServerInterceptor] = []  # type: ignore[type-arg]
    admin = admin_token(settings)
    if admin is not None:
        interceptors.append(AuthInterceptor(admin))
    # Undecodable requests: INVALID_ARGUMENT naming the message, not gRPC's bare INTERNAL.
    interceptors.append(DecodeGuard())
    return interceptors


def build_server(
    settings: Settings,
    port: int,
    register: Sequence[Callable[[grpc.Server], None]],
    service_names: Sequence[str],
) -> RunningServer:
    """Start a server on ``settings.host:port`` (0 picks a free port) with health and reflection.

    ``register`` are the generated ``add_XServicer_to_server`` calls bound to their servicers;
    ``service_names`` are the full names reported as SERVING by the health service. With an
    admin token every call but a health check needs a token; with ``tls_cert`` it serves TLS.
    A bad token or TLS setting raises (ValueError) before anything is bound.
    """
    interceptors = server_interceptors(settings)
    secured = any(isinstance(i, AuthInterceptor) for i in interceptors)
    credentials = tls.server_credentials(settings)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_threads),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        interceptors=interceptors,
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise RuntimeError(f"could not bind {settings.host}:{port}")
    server.start()
    for name in [*service_names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving %s on %s:%d (%s, %s)",
        ", ".join(service_names),
        settings.host,
        bound,
        "plain text"
        if credentials is None
        else "mutual TLS"
        if settings.tls_client_auth
        else "TLS",
        "tokens required" if secured else "no authentication",
    )
    if not secured:
        log.warning(
            "this cluster is open: no admin token (PSC_ADMIN_TOKEN or PSC_ADMIN_TOKEN_FILE) is "
            "set, so anyone who reaches %s:%d may call every RPC, including submitting model "
            "code that workers run",
            settings.host,
            bound,
        )
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
