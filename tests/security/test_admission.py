"""Admission limits: RESOURCE_EXHAUSTED naming the limit, and nothing created."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from tests.security.conftest import RPC_TIMEOUT, Cluster, tiny_chunks
from tests.support import rpc_failure

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def job_ids(stub: co_grpc.CoordinatorStub) -> list[str]:
    return [j.job_id for j in stub.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs]


def submit(stub: co_grpc.CoordinatorStub) -> co_pb2.JobInfo:
    return stub.SubmitJob(iter(tiny_chunks()), timeout=RPC_TIMEOUT)


def test_a_model_over_max_model_parameters_is_refused(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Prepare: the tiny model has 4 * 3 + 3 = 15 parameters.
    cluster = make_cluster(max_model_parameters=14)
    stub = co_grpc.CoordinatorStub(cluster.channel(cluster.address))

    # Execute
    code, message = rpc_failure(lambda: submit(stub))

    # Assert
    assert code == EXHAUSTED
    assert "15 parameters" in message and "max_model_parameters=14" in message
    assert job_ids(stub) == []
    assert not any((cluster.settings.state_dir / "jobs").glob("*")), "no blob was written"


def test_max_active_jobs_counts_pending_and_running_jobs(
    make_cluster: Callable[..., Cluster], admin_token: str
) -> None:
    # Prepare
    cluster = make_cluster(admin_token=admin_token, max_active_jobs=2)
    stub = co_grpc.CoordinatorStub(cluster.channel(cluster.address, token=admin_token))
    first, _ = submit(stub), submit(stub)

    # Execute
    code, message = rpc_failure(lambda: submit(stub))
    before_cancel = job_ids(stub)
    stub.CancelJob(co_pb2.GetJobRequest(job_id=first.job_id), timeout=RPC_TIMEOUT)
    again = submit(stub)

    # Assert
    assert code == EXHAUSTED
    assert "max_active_jobs=2" in message and "PSC_MAX_ACTIVE_JOBS" in message
    assert len(before_cancel) == 2, "the refused submission created nothing"
    assert again.job_id not in before_cancel, "a cancelled job frees its slot"


def test_max_active_jobs_per_client_limits_one_submitter(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Prepare: no auth, so the submitter is the peer host.
    cluster = make_cluster(max_active_jobs=10, max_active_jobs_per_client=1)
    stub = co_grpc.CoordinatorStub(cluster.channel(cluster.address))
    submit(stub)

    # Execute
    code, message = rpc_failure(lambda: submit(stub))

    # Assert
    assert code == EXHAUSTED
    assert "max_active_jobs_per_client=1" in message
    assert len(job_ids(stub)) == 1
