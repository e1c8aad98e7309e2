"""Data where it lives, through compose: the host's PSC_DATA_DIR is /data in every worker,
read-only, and a job naming /data/... trains on it without uploading it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from examples.digits_big_model import BigDigitsNet
from pscluster.client.sdk import Client
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from tests.containers.compose import ComposeProject
from tests.containers.conftest import JOB_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]


def test_a_job_trains_on_npy_shards_in_the_mounted_folder(
    compose: ComposeProject, client: Client, data_dir: Path
) -> None:
    # Prepare: 6 MB of the big digits, written on the host into the mounted folder.
    out = data_dir / "digits-small"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "make_big_digits.py"),
            "--out",
            str(out),
            "--megabytes",
            "6",
            "--test-rows",
            "400",
        ],
        check=True,
        capture_output=True,
    )
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    # Execute: the host has no /data; the SDK leaves the path to the workers. Sync, because
    # 144 async steps of SGD with momentum 0.9 across 3 workers diverge on 1,461 rows in about
    # half the runs (the staleness adds to the momentum); sync reached 0.86-0.89 every time.
    job = client.submit(
        model=BigDigitsNet,
        data="npy",
        data_args={"path": "/data/digits-small"},
        mode="sync",
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        epochs=3,
        batch_size=32,
        partitions=4,
    )
    info = job.wait(timeout=JOB_TIMEOUT)

    # Assert: trained on the workers' reads, and nothing was uploaded.
    assert info.state == "completed", info.error
    assert info.test_accuracy is not None and info.test_accuracy > 0.5
    with grpc.insecure_channel(compose.address) as channel:
        ask = co_pb2.FetchBlobRequest(job_id=job.id, blob="dataset")
        with pytest.raises(grpc.RpcError) as refused:
            list(co_grpc.CoordinatorStub(channel).FetchBlob(ask, timeout=30))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_the_data_is_read_only_in_the_workers(compose: ComposeProject) -> None:
    probe = (
        "import os\n"
        "try:\n"
        "    open('/data/written-by-a-worker', 'w')\n"
        "    print('writable')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    assert compose.exec_python("worker", probe).startswith("refused")
