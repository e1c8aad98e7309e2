"""A real local cluster (coordinator, shards and workers as processes on loopback) per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pscluster.client.local import LocalCluster

# Short timeouts so that failure detection happens within a test's patience.
FAST = {
    "PSC_HEARTBEAT_SECONDS": "0.5",
    "PSC_WORKER_TIMEOUT_SECONDS": "3",
    "PSC_STALL_SECONDS": "3",
    "PSC_PULL_WAIT_SECONDS": "5",
}


def start_cluster(path: Path, shards: int, workers: int, **env: str) -> LocalCluster:
    cluster = LocalCluster(shards=shards, workers=workers, state_dir=path, env={**FAST, **env})
    cluster.start()
    if workers:
        cluster.wait_for_workers(workers, timeout=60)
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("cluster"), shards=2, workers=3)
    try:
        yield c
    finally:
        c.stop()
