"""Run a coordinator: in-process (tests, local clusters) with :func:`serve`, or as a process
with :func:`main` (``python -m pscluster.coordinator``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pscluster.config import Settings
from pscluster.coordinator.app import Coordinator
from pscluster.coordinator.servicer import SERVICE_NAME, CoordinatorServicer
from pscluster.coordinator.telemetry import coordinator_registry
from pscluster.heap import freeze_startup_objects
from pscluster.logs import configure_logging
from pscluster.telemetry import MetricsServer, serve_metrics
from pscluster.transport.server import RunningServer, build_server, wait_for_termination
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

log = logging.getLogger(__name__)


@dataclass
class CoordinatorHandle:
    server: RunningServer
    coordinator: Coordinator
    metrics: MetricsServer | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.coordinator.settings.host}:{self.server.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls (in-flight ones get ``grace`` seconds), then the monitor."""
        self.server.stop(grace)
        if self.metrics is not None:
            self.metrics.stop()
        self.coordinator.close()


def serve(settings: Settings, port: int | None = None) -> CoordinatorHandle:
    """Start a coordinator on ``port`` (default ``settings.coordinator_port``; 0 picks one)."""
    coordinator = Coordinator(settings)
    servicer = CoordinatorServicer(coordinator)

    def register(server: grpc.Server) -> None:
        co_grpc.add_CoordinatorServicer_to_server(servicer, server)

    try:
        running = build_server(
            settings,
            settings.coordinator_port if port is None else port,
            [register],
            [SERVICE_NAME],
        )
    except BaseException:
        coordinator.close()
        raise
    metrics = None
    if settings.metrics_port is not None:
        registry = coordinator_registry(coordinator.rt)
        try:
            metrics = serve_metrics(registry, settings.host, settings.metrics_port)
        except BaseException:
            running.stop(0)
            coordinator.close()
            raise
        log.info("metrics on http://%s:%d/metrics", settings.host, metrics.port)
    coordinator.start()
    return CoordinatorHandle(running, coordinator, metrics)


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m pscluster.coordinator",
        description="The pscluster coordinator. Flags override PSC_* environment variables.",
    )
    parser.add_argument("--port", type=int, help="port to bind (0: any free port)")
    parser.add_argument("--host", help="interface to bind, e.g. 0.0.0.0")
    parser.add_argument(
        "--shards",
        help="comma-separated shard addresses host:port,... (unset: shards register themselves)",
    )
    parser.add_argument("--state-dir", type=Path, help="where the database and job blobs live")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    args = vars(parser.parse_args(argv))
    if args["port"] is not None and not 0 <= args["port"] <= 65535:
        parser.error(f"--port {args['port']} is out of range 0..65535")
    return {k: v for k, v in args.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    overrides = parse_args(argv)
    port = overrides.pop("port", None)
    settings = Settings(**overrides)
    configure_logging(settings, "coordinator")
    # Before serving: a SIGTERM that arrives once the port is announced must find the
    # handler wait_for_termination installs, not a process still busy collecting.
    freeze_startup_objects()
    handle = serve(settings, port)
    shards = settings.shard_list() or "registering (PSC_SHARDS unset)"
    log.info("coordinator state in %s, shards %s", settings.state_dir, shards)
    # On SIGTERM: the monitor stops first (no new shard calls), then the server drains its
    # calls within the grace period, and only then is the store closed under them.
    wait_for_termination(handle.server, settings.grace_seconds, handle.coordinator.monitor.stop)
    handle.coordinator.close()
    log.info("coordinator stopped")
