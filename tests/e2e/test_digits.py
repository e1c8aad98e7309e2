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


@pytest.mark.parametrize(
    ("mode", "local_steps"),
    [("async", 0), ("sync", 0), ("ssp", 0), ("sync", 8)],
    ids=["async", "sync", "ssp", "sync-local-sgd"],
)
def test_digits_reaches_95_percent_and_the_fetched_model_agrees(
    cluster: LocalCluster, mode: str, local_steps: int
) -> None:
    # Prepare: the README's example job, in each mode (and as local SGD: 8 steps a window).
    example = load_job_file(ROOT / "examples" / "digits.yaml")
    kwargs = {
        **example.submit_kwargs(),
        "mode": mode,
        "staleness": STALENESS,
        "local_steps": local_steps,
    }
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
    if local_steps:
        # A push per window, not per batch (a window is cut short at a lease's end, so there
        # are more than batches / 8 of them; without local steps pushes == batches).
        for shard in metrics.shards:
            assert 0 < shard.pushes_applied <= len(metrics.steps) // 2
    if mode == "ssp":
        # The bound holds on every shard: no pull granted further ahead, no push applied staler.
        for shard in metrics.shards:
            assert shard.max_clock_lead <= STALENESS
            assert max(shard.clock_staleness, default=0) <= STALENESS
            assert sum(shard.clock_staleness.values()) > 0, "pushes were recorded"
