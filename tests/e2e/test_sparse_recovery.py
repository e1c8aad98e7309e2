"""A shard holding table rows SIGKILLed mid-job: it comes back from its write-ahead log and
no acknowledged row update is lost or applied twice. With one worker in sync the finished
model must then still be exactly single-process PyTorch's."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import start_cluster
from tests.e2e.test_membership import wait_for_steps
from tests.e2e.test_shard_recovery import RECOVERED
from tests.e2e.test_sparse_tables import exact_reference, submit_exact

pytestmark = pytest.mark.slow
EPOCHS = 6


def test_a_shard_killed_mid_job_loses_no_row_update(tmp_path: Path) -> None:
    # Prepare: the reference, and a one-worker sync job from the same initial model.
    initial, expected = exact_reference(lambda p: torch.optim.Adagrad(p, lr=0.1), EPOCHS)
    cluster = start_cluster(tmp_path, shards=2, workers=1)
    try:
        with cluster.client() as client:
            job = submit_exact(client, {"name": "adagrad", "lr": 0.1}, initial, EPOCHS)
            wait_for_steps(job, 15, timeout=120)

            # Execute: shard-0 (half of every table's rows) crashes and starts again.
            shard = cluster.shard_handles[0]
            cluster.kill(shard, signal.SIGKILL)
            cluster.restart(shard)
            info = job.wait(timeout=400)
            remote = job.fetch_model()
    finally:
        cluster.stop()

    # Assert: every step applied once, rows and dense parameters alike.
    assert info.state == "completed", info.error
    found = RECOVERED.findall(shard.log_path.read_text(errors="replace"))
    assert found and found[-1][0] == "1", shard.log_tail()
    for name, value in expected.items():
        torch.testing.assert_close(remote[name], value, rtol=1e-4, atol=1e-5, msg=name)
