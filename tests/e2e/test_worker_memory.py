"""A worker's memory after a large job: what it held for the job is given back when the
job ends (the runtime dropped, ``gc``, ``malloc_trim``), not kept until a lease is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import start_cluster
from tests.e2e.user_models import Wide
from tests.support import wait_for

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def settled_rss_mb(pid: int, timeout: float = 30.0) -> float:
    """The process's RSS once two reads half a second apart agree within 2 MB."""
    last = [rss_mb(pid)]

    def steady() -> bool:
        last.append(rss_mb(pid))
        return abs(last[-1] - last[-2]) < 2

    wait_for(steady, timeout, what=f"the RSS of {pid} to settle", poll=0.5)
    return last[-1]


def test_a_worker_gives_a_large_jobs_memory_back_when_the_job_ends(tmp_path: Path) -> None:
    # Prepare: one worker, warmed up by a small job so that its imports are loaded.
    rng = np.random.default_rng(0)
    c = start_cluster(tmp_path, shards=1, workers=1, PSC_TORCH_THREADS="1")
    try:
        worker = c.workers[0].pid
        small = rng.normal(size=(200, 1000)).astype(np.float32)
        labels = rng.integers(0, 2, 200)
        with c.client() as client:
            client.submit(model=Wide, train=(small, labels), test=(small, labels), epochs=1).wait(
                timeout=120
            )
            wait_for(
                lambda: all(w.job_id == "" for w in client.status().workers),
                30,
                what="the worker to be done with the small job",
                poll=0.2,
            )
        idle = settled_rss_mb(worker)
        big = rng.normal(size=(75_000, 1000)).astype(np.float32)  # 300 MB
        labels = rng.integers(0, 2, 75_000)

        # Execute
        with c.client() as client:
            job = client.submit(
                model=Wide,
                train=(big, labels),
                test=(big[:1000], labels[:1000]),
                epochs=1,
                batch_size=1024,
                partitions=2,
            )
            del big
            job.wait(timeout=300)
        peak_seen = rss_mb(worker)

        # Assert
        wait_for(
            lambda: rss_mb(worker) <= idle + 50,
            30,
            what=f"the worker's RSS back within 50 MB of its idle {idle:.0f} MB",
            poll=0.5,
            context=lambda: f"peak seen {peak_seen:.0f} MB, now {rss_mb(worker):.0f} MB",
        )
    finally:
        c.stop()
