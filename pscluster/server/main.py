"""Run a parameter-server shard: ``python -m pscluster.server --port 0``."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

from pscluster.config import Settings
from pscluster.heap import MAX_MMAP_THRESHOLD, freeze_startup_objects, return_large_blocks
from pscluster.logs import configure_logging
from pscluster.model.optimizer import warm_up
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.durability.recovery import recover_all
from pscluster.server.identity import advertised_address, resolve_identity
from pscluster.server.peer_ranges import PeerRanges
from pscluster.server.registration import Registrar, registers
from pscluster.server.servicer import SERVICE_NAME, ParameterServerServicer, add_to_server
from pscluster.server.shard import Shard
from pscluster.server.telemetry import shard_registry
from pscluster.telemetry import MetricsServer, serve_metrics
from pscluster.transport.server import RunningServer, build_server, wait_for_termination

log = logging.getLogger(__name__)


@dataclass
class ShardServer(RunningServer):
    """A running shard: the gRPC server, plus its metrics endpoint when one is served."""

    shard: Shard | None = None
    metrics: MetricsServer | None = None
    # Announces the shard to its coordinator (None: it does not register).
    registrar: Registrar | None = None
    # Its client to the other shards (a move's ranges are read from them).
    peers: PeerRanges | None = None

    def stop(self, grace: float | None = None) -> None:
        if self.registrar is not None:  # first: no new jobs are placed on a shard going away
            self.registrar.stop()
        super().stop(grace)
        if self.metrics is not None:
            self.metrics.stop()
        if self.peers is not None:
            self.peers.close()


def serve(settings: Settings, port: int | None = None) -> ShardServer:
    """Start a shard in this process and return at once.

    ``port`` None: ``settings.shard_port``; 0: a free port (read it from ``.port``). With
    ``shard_data_dir`` set, every job found there is recovered before the port is served, so
    no caller ever sees a shard that has forgotten its jobs. With ``metrics_port`` set, its
    Prometheus series are served there (``.metrics.port`` is the port bound). Given its
    coordinator's address (``registers``), it registers there once it serves, and every
    heartbeat after.
    """
    warm_up()
    settings = resolve_identity(settings)
    shard = recovered_shard(settings)
    registry, telemetry = shard_registry(shard)
    measured = telemetry if settings.metrics_port is not None else None
    servicer = ParameterServerServicer(shard, settings, telemetry=measured)
    running = build_server(
        settings,
        settings.shard_port if port is None else port,
        [lambda server: add_to_server(servicer, server)],
        [SERVICE_NAME],
    )
    servicer.advertise = settings.advertise or f"{settings.host}:{running.port}"
    metrics = None
    if settings.metrics_port is not None:
        try:
            metrics = serve_metrics(registry, settings.host, settings.metrics_port)
        except BaseException:
            running.stop(0)
            raise
        log.info("metrics on http://%s:%d/metrics", settings.host, metrics.port)
    registrar = None
    if registers(settings):
        address = advertised_address(settings, running.port)
        registrar = Registrar(settings, settings.shard_id, address).start()
    return ShardServer(
        running.server, running.port, running.health, shard, metrics, registrar, servicer.peers
    )


def recovered_shard(settings: Settings) -> Shard:
    """A shard with the jobs of ``settings.shard_data_dir`` (none without one)."""
    durability = DurabilityConfig.from_settings(settings)
    shard = Shard(durability, max_values=settings.max_model_parameters)
    if durability is None:
        return shard
    started = time.monotonic()
    recovered = recover_all(durability)
    for item in recovered:
        shard.adopt(item.job)
    log.info(
        "recovered %d job(s) from %s (%d records replayed) in %.3fs; wal_fsync=%s",
        len(recovered),
        durability.data_dir,
        sum(item.records_replayed for item in recovered),
        time.monotonic() - started,
        durability.fsync,
    )
    return shard


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pscluster.server",
        description="A parameter-server shard. Flags override the PSC_* environment.",
    )
    parser.add_argument("--host", help="interface to bind (PSC_HOST)")
    parser.add_argument("--port", type=int, help="port to bind, 0 for a free one (PSC_SHARD_PORT)")
    parser.add_argument("--advertise", help="address others reach this shard at (PSC_ADVERTISE)")
    parser.add_argument(
        "--coordinator", help="register with this coordinator, host:port (PSC_COORDINATOR)"
    )
    parser.add_argument("--shard-id", help="stable id to register under (PSC_SHARD_ID)")
    parser.add_argument("--log-level", help="DEBUG, INFO, ... (PSC_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {
        "host": args.host,
        "shard_port": args.port,
        "advertise": args.advertise,
        "coordinator": args.coordinator,
        "shard_id": args.shard_id,
        "log_level": args.log_level,
    }
    settings = Settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings, "shard")
    freeze_startup_objects()  # before serving, as the coordinator does (see there)
    # Per-push temporaries as large as the shard's range go back to the system when freed;
    # gRPC's messages (up to max_message_bytes) are still reused (see pscluster.heap).
    return_large_blocks(min(2 * settings.max_message_bytes, MAX_MMAP_THRESHOLD))
    running = serve(settings)
    wait_for_termination(running, settings.grace_seconds, on_stop=lambda: None)
