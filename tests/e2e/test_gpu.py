"""Workers train on CUDA when a GPU is there (run on a GPU machine; CI has none and skips)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pscluster.client.spec_file import load_job_file
from tests.e2e.conftest import start_cluster
from tests.e2e.data import digits_images
from tests.e2e.user_models import DigitsCNN

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


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_trains_the_batchnorm_cnn_within_a_point_of_fp32(
    tmp_path: Path, precision: str
) -> None:
    # Prepare: fp16 scales the loss dynamically and sends the scale with each gradient.
    train, test = digits_images()
    common: dict[str, Any] = {
        "train": train,
        "test": test,
        "mode": "sync",
        "epochs": 8,
        "batch_size": 32,
        "seed": 2,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    }
    cluster = start_cluster(tmp_path, shards=2, workers=2)
    try:
        with cluster.client() as client:
            # Execute
            reference = client.submit(model=DigitsCNN, precision="fp32", **common)
            mixed = client.submit(model=DigitsCNN, precision=precision, **common)
            ref_info, info = reference.wait(timeout=300), mixed.wait(timeout=300)
    finally:
        cluster.stop()

    # Assert
    assert info.state == "completed"
    assert info.test_accuracy is not None and ref_info.test_accuracy is not None
    assert info.test_accuracy >= ref_info.test_accuracy - 0.01
