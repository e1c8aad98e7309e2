"""The main job: digits on 2 shards and 3 workers reaches >= 95% in every consistency mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pscluster.client.local import LocalCluster
from pscluster.client.spec_file import load_job_file
from tests.e2e.data import accuracy

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

STALENESS = 2


@pytest.mark.parametrize("mode", ["async", "sync", "ssp"])
def test_digits_reaches_95_percent_and_the_fetched_model_agrees(
    cluster: LocalCluster, mode: str
) -> None:
    # Prepare: the README's example job, in each mode.
    example = load_job_file(ROOT / "examples" / "digits.yaml")
    kwargs = {**example.submit_kwargs(), "mode": mode, "staleness": STALENESS}
    test = kwargs["test"]

    # Execute
    with cluster.client() as client:
        job = client.submit(**kwargs)
        info = job.wait(timeout=300)
        metrics = job.metrics()
        state = job.fetch_model()

    # Assert
    assert info.state == "completed"
    assert info.test_accuracy is not None and info.test_accuracy >= 0.95, (
        f"{mode}: final test accuracy {info.test_accuracy}"
    )
    model = kwargs["model"](**kwargs["model_kwargs"])
    model.load_state_dict(state)
    local = accuracy(model, *test)
    assert local == pytest.approx(info.test_accuracy, abs=1e-9)
    assert len(metrics.epochs) == kwargs["epochs"]
    assert metrics.pushes_applied > 0
    assert len(metrics.pushes_by_worker) == 3, "all three workers took part"
    assert all(torch.isfinite(t).all() for t in state.values())
    if mode == "ssp":
        # The bound holds on every shard: no pull granted further ahead, no push applied staler.
        for shard in metrics.shards:
            assert shard.max_clock_lead <= STALENESS
            assert max(shard.clock_staleness, default=0) <= STALENESS
            assert sum(shard.clock_staleness.values()) > 0, "pushes were recorded"
