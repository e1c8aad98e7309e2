"""Entry point of a worker process: ``python -m pscluster.worker`` or ``pscluster worker``."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from pscluster.config import Settings
from pscluster.worker.agent import WorkerAgent, configure_torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pscluster worker", description=__doc__)
    parser.add_argument("--coordinator", help="coordinator address (env PSC_COORDINATOR)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (env PSC_DEVICE)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s",
    )
    configure_torch(settings)
    stop = threading.Event()

    def handle(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    WorkerAgent(settings, stop).run()


if __name__ == "__main__":
    main()
