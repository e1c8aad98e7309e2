"""Workers train on CUDA when a GPU is there (run on a GPU machine; CI has none and skips)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pscluster.client.spec_file import load_job_file
from tests.e2e.conftest import start_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["sync", "ssp"])
def test_workers_pick_the_gpu_and_train_digits_to_target(tmp_path: Path, mode: str) -> None:
    # Prepare
    cluster = start_cluster(tmp_path, shards=2, workers=2)
    kwargs = {**load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs(), "mode": mode}
    try:
        with cluster.client() as client:
            devices = [w.device for w in client.status().workers]

            # Execute
            job = client.submit(**kwargs)
            info = job.wait(timeout=300)
            state = job.fetch_model()
    finally:
        cluster.stop()

    # Assert
    assert devices and all(d.startswith("cuda") for d in devices), devices
    assert info.state == "completed"
    assert info.test_accuracy is not None and info.test_accuracy >= 0.95
    model = kwargs["model"](**kwargs["model_kwargs"])
    model.load_state_dict(
        state
    )  # a GPU-trained model loads on the CPU: weights come back as CPU tensors
