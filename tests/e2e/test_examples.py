"""The examples under examples/ run end to end against a real local cluster, as their
docstrings tell a user to run them: the BatchNorm CNN script, the LoRA fine-tuning script and
the regression job file. Epochs are cut short to keep the module near a minute on 2 cores;
each script's own checks (fetched model = reported accuracy; LoRA beats the base and leaves
frozen weights alone) decide its exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.local import LocalCluster
from pscluster.client.processes import child_env
from pscluster.client.spec_file import load_job_file
from tests.e2e.conftest import start_cluster

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("examples"), shards=2, workers=2)
    try:
        yield c
    finally:
        c.stop()


def run_example(cluster: LocalCluster, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python examples/<script> ...`` in its own process, as a user runs it."""
    # child_env puts this checkout first on PYTHONPATH, as for the cluster's own processes.
    env = child_env(os.environ, {"PSC_COORDINATOR": cluster.address})
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_batchnorm_cnn_example_fetches_what_the_job_reported(cluster: LocalCluster) -> None:
    # Execute
    done = run_example(cluster, "cnn_batchnorm.py", "--epochs", "3")

    # Assert: exit 0 means the fetched model, in eval(), scored exactly the reported accuracy.
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "(fetched model in eval(), evaluated here)" in done.stdout


def test_lora_example_fine_tunes_with_a_fraction_of_the_bytes(cluster: LocalCluster) -> None:
    # Execute
    done = run_example(cluster, "finetune_lora.py", "--base-epochs", "4", "--epochs", "3")

    # Assert: exit 0 means LoRA beat the base on rotated digits with the base weights frozen.
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ratio_line = next(line for line in done.stdout.splitlines() if "fewer bytes" in line)
    ratio = float(ratio_line.split("LoRA pushes ")[1].split("x")[0])
    assert ratio >= 10.0, ratio_line


def test_regression_job_file_reaches_its_target_mse(cluster: LocalCluster) -> None:
    # Prepare
    job_file = EXAMPLES / "regression.yaml"
    spec = load_job_file(job_file).spec
    assert spec.target_metric is not None and spec.metric == "mse"

    # Execute: the job file as the README submits one.
    result = CliRunner().invoke(app, ["submit", str(job_file), "--watch", "-a", cluster.address])

    # Assert: completed, and its final test mse is at or below the file's target_metric.
    assert result.exit_code == 0, result.output
    with cluster.client() as client:
        info = next(j for j in reversed(client.jobs()) if j.name == spec.name)
    assert info.state == "completed" and info.metric == "mse"
    assert info.metric_value is not None and info.metric_value <= spec.target_metric, info
