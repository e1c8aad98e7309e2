"""A whole local cluster (processes on loopback) with an admin token and mutual TLS trains the
digits example, and its job token reaches that job from a client that holds nothing else."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pscluster.client.cli_certs import CertPaths
from pscluster.client.errors import PSClusterError
from pscluster.client.local import LocalCluster
from pscluster.client.sdk import Client
from pscluster.client.spec_file import load_job_file
from pscluster.config import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

FAST = {
    "PSC_HEARTBEAT_SECONDS": "0.5",
    "PSC_WORKER_TIMEOUT_SECONDS": "5",
    "PSC_STALL_SECONDS": "5",
    "PSC_PULL_WAIT_SECONDS": "5",
}


def test_digits_trains_on_a_cluster_with_tokens_and_mutual_tls(
    tmp_path: Path, certs: CertPaths, admin_token: str
) -> None:
    # Prepare: every process gets the admin token and the same TLS files (mutual TLS).
    env = {
        **FAST,
        "PSC_ADMIN_TOKEN": admin_token,
        "PSC_TLS_CERT": str(certs.server_cert),
        "PSC_TLS_KEY": str(certs.server_key),
        "PSC_TLS_CA": str(certs.ca),
        "PSC_TLS_CLIENT_AUTH": "true",
    }
    example = load_job_file(ROOT / "examples" / "digits.yaml")
    kwargs = {**example.submit_kwargs(), "epochs": 5}
    owner_settings = Settings(tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key)

    # Execute
    with LocalCluster(shards=2, workers=2, state_dir=tmp_path / "cluster", env=env) as cluster:
        with cluster.client() as admin:
            job = admin.submit(**kwargs)
        assert job.token, "a cluster with an admin token hands out job tokens"
        with Client(cluster.address, settings=owner_settings, token=job.token) as owner:
            info = owner.job(job.id).wait(timeout=300)
            model = owner.job(job.id).fetch_model()
            with pytest.raises(PSClusterError) as denied:
                owner.jobs()
        with (
            Client(cluster.address, settings=owner_settings) as anonymous,
            pytest.raises(PSClusterError) as unauthenticated,
        ):
            anonymous.jobs()

    # Assert
    assert info.state == "completed"
    assert info.test_accuracy is not None and info.test_accuracy >= 0.9, info.test_accuracy
    assert set(model) >= {
        name for name, _ in kwargs["model"](**kwargs["model_kwargs"]).named_parameters()
    }
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert unauthenticated.value.code == grpc.StatusCode.UNAUTHENTICATED
