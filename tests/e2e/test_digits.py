"""The main job: digits on 2 shards and 3 workers reaches >= 95% in every consistency mode."""

from __future__ import annotations

import pytest
import torch

from pscluster.client.local import LocalCluster
from tests.e2e.data import accuracy, digits
from tests.e2e.models import DigitsMLP

pytestmark = pytest.mark.slow

STALENESS = 2


@pytest.mark.parametrize("mode", ["async", "sync", "ssp"])
def test_digits_reaches_95_percent_and_the_fetched_model_agrees(
    cluster: LocalCluster, mode: str
) -> None:
    # Prepare
    train, test = digits()

    # Execute
    with cluster.client() as client:
        job = client.submit(
            model=DigitsMLP,
            train=train,
            test=test,
            mode=mode,
            staleness=STALENESS,
            optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
            epochs=10,
            batch_size=32,
            name=f"digits-{mode}",
        )
        info = job.wait(timeout=300)
        metrics = job.metrics()
        state = job.fetch_model()

    # Assert
    assert info.state == "completed"
    assert info.test_accuracy is not None and info.test_accuracy >= 0.95, (
        f"{mode}: final test accuracy {info.test_accuracy}"
    )
    model = DigitsMLP()
    model.load_state_dict(state)
    local = accuracy(model, *test)
    assert local == pytest.approx(info.test_accuracy, abs=1e-9)
    assert len(metrics.epochs) == 10
    assert metrics.pushes_applied > 0
    assert len(metrics.pushes_by_worker) == 3, "all three workers took part"
    assert all(torch.isfinite(t).all() for t in state.values())
    if mode == "ssp":
        # The bound holds on every shard: no pull granted further ahead, no push applied staler.
        for shard in metrics.shards:
            assert shard.max_clock_lead <= STALENESS
            assert max(shard.clock_staleness, default=0) <= STALENESS
            assert sum(shard.clock_staleness.values()) > 0, "pushes were recorded"
