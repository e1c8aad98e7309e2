"""A cluster whose shards register: a coordinator started with no shard list, two shard
processes that announce themselves, a job placed on them that trains, and `pscluster status`
listing both (a coordinator restart: tests/coordinator/test_shard_service.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.local import LocalCluster
from tests.e2e.conftest import FAST
from tests.e2e.data import digits
from tests.e2e.models import DigitsMLP


def test_registered_shards_train_a_job_and_show_in_status(tmp_path: Path) -> None:
    # Prepare
    cluster = LocalCluster(
        shards=2,
        workers=1,
        state_dir=tmp_path,
        env={**FAST, "PSC_SHARD_TIMEOUT_SECONDS": "3"},
        register_shards=True,
    )
    train, test = digits()
    runner = CliRunner()
    with cluster, cluster.client() as client:
        # Execute
        job = client.submit(
            model=DigitsMLP,
            train=train,
            test=test,
            epochs=5,
            batch_size=32,
            optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        )
        status = runner.invoke(app, ["status", "-a", cluster.address], env={"COLUMNS": "200"})
        info = job.wait(timeout=120)
        during = {s.shard_id: s for s in client.status().registry}

    # Assert: the job was placed on both registered shards and trained
    assert info.state == "completed"
    assert info.test_accuracy is not None and info.test_accuracy >= 0.9
    assert sorted(during) == ["shard-0", "shard-1"]
    assert sorted(s.address for s in during.values()) == sorted(cluster.shard_addresses)
    # ... `pscluster status` listed both, live, each holding the job while it ran
    assert status.exit_code == 0, status.output
    assert "registered" in status.output
    for name, address in zip(("shard-0", "shard-1"), cluster.shard_addresses, strict=True):
        row = next(line for line in status.output.splitlines() if name in line)
        assert address in row and "yes" in row and job.id in row, status.output
