"""Entry point of a worker process: ``python -m pscluster.worker`` or ``pscluster worker``."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from pscluster.config import Settings
from pscluster.logs import configure_logging
from pscluster.model.optimizer import warm_up
from pscluster.telemetry import serve_metrics
from pscluster.worker.agent import WorkerAgent
from pscluster.worker.runtime import configure_torch
from pscluster.worker.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pscluster worker", description=__doc__)
    parser.add_argument("--coordinator", help="coordinator address (env PSC_COORDINATOR)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (env PSC_DEVICE)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings, "worker")
    configure_torch(settings)
    # Local SGD steps run torch.optim on the worker: its first optimizer's import cost (2-5 s
    # here) is paid now, before the worker asks for work, not in a job's first window.
    warm_up()
    stop = threading.Event()

    def handle(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    telemetry = WorkerTelemetry()
    telemetry.slowdown.set(settings.slowdown)
    metrics = None
    if settings.metrics_port is not None:
        metrics = serve_metrics(telemetry.registry, settings.host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.host, metrics.port)
    try:
        WorkerAgent(settings, stop, telemetry).run()
    finally:
        if metrics is not None:
            metrics.stop()


if __name__ == "__main__":
    main()
