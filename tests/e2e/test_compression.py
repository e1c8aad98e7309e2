"""Compressed pushes on a real local cluster: the digits example with top-k 1% and error
feedback still reaches its target, while pushing far fewer bytes than float32 would."""

from __future__ import annotations

from pathlib import Path

import pytest

from pscluster.client.local import LocalCluster
from pscluster.client.spec_file import load_job_file

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_topk_with_error_feedback_reaches_the_target_with_30x_fewer_bytes(
    cluster: LocalCluster,
) -> None:
    # Prepare: the README's example job, its pushes compressed to the top 1% of entries.
    example = load_job_file(ROOT / "examples" / "digits.yaml")
    kwargs = {
        **example.submit_kwargs(),
        "compression": {"name": "topk", "ratio": 0.01, "pull_dtype": "float16"},
    }

    # Execute
    with cluster.client() as client:
        job = client.submit(**kwargs)
        info = job.wait(timeout=300)
        metrics = job.metrics()

    # Assert
    assert info.state == "completed", info.error
    assert info.test_accuracy is not None and info.test_accuracy >= 0.95, info.test_accuracy
    assert metrics.pushes_rejected.get("invalid", 0) == 0
    ratio = metrics.compression_ratio
    # ~5k values per shard: k = 50 entries of 8 bytes + a 4-byte count, against 20 kB raw.
    assert ratio is not None and ratio >= 30, f"raw/pushed bytes = {ratio}"
