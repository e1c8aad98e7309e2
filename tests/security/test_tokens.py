"""Every RPC needs a token once the cluster has an admin token: real servers, real sockets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pscluster.config import Settings
from pscluster.transport.auth import JobTokens, TokenConfigError, admin_token
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc
from tests.security.conftest import RPC_TIMEOUT, Cluster, tiny_chunks
from tests.support import rpc_failure

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def secured(make_cluster: Callable[..., Cluster], admin_token: str) -> Cluster:
    return make_cluster(admin_token=admin_token)


def coordinator(cluster: Cluster, **caller: object) -> co_grpc.CoordinatorStub:
    return co_grpc.CoordinatorStub(cluster.channel(cluster.address, **caller))


def submit(stub: co_grpc.CoordinatorStub, name: str = "tiny") -> co_pb2.JobInfo:
    return stub.SubmitJob(iter(tiny_chunks(name)), timeout=RPC_TIMEOUT)


def job_request(job_id: str) -> co_pb2.GetJobRequest:
    return co_pb2.GetJobRequest(job_id=job_id)


def test_admin_token_can_submit_and_the_reply_carries_a_job_token(
    secured: Cluster, admin_token: str
) -> None:
    # Execute
    admin = coordinator(secured, token=admin_token)
    info = submit(admin)
    listed = admin.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT)
    fetched = admin.GetJob(job_request(info.job_id), timeout=RPC_TIMEOUT)

    # Assert
    assert info.token.startswith("pscj.")
    assert [j.job_id for j in listed.jobs] == [info.job_id]
    assert fetched.token == "", "the job token is in SubmitJob's reply only"
    assert all(not j.token for j in listed.jobs)


def test_no_token_and_a_wrong_token_are_unauthenticated(secured: Cluster) -> None:
    # Prepare
    anonymous = coordinator(secured)
    wrong = coordinator(secured, token="not-the-admin-token-at-all")
    forged = coordinator(secured, token="pscj.j-00000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAA")

    # Execute
    failures = [
        rpc_failure(lambda: anonymous.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: anonymous.SubmitJob(iter(tiny_chunks()), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: wrong.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: forged.GetJob(job_request("j-00000000"), timeout=RPC_TIMEOUT)),
    ]

    # Assert
    assert [code for code, _ in failures] == [UNAUTHENTICATED] * 4
    assert "PSC_TOKEN" in failures[0][1], "the message says how to send a token"
    assert "not valid for this cluster" in failures[2][1]


def test_a_job_token_reaches_its_own_job_only(secured: Cluster, admin_token: str) -> None:
    # Prepare: two jobs, and a client holding only the first one's token.
    admin = coordinator(secured, token=admin_token)
    mine, other = submit(admin, "mine"), submit(admin, "other")
    owner = coordinator(secured, token=mine.token)

    # Execute
    info = owner.GetJob(job_request(mine.job_id), timeout=RPC_TIMEOUT)
    metrics = owner.GetMetrics(job_request(mine.job_id), timeout=RPC_TIMEOUT)
    plan = owner.GetJobPlan(job_request(mine.job_id), timeout=RPC_TIMEOUT)
    on_other = [
        rpc_failure(lambda: owner.GetJob(job_request(other.job_id), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: owner.CancelJob(job_request(other.job_id), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: owner.FetchModel(job_request(other.job_id), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: owner.FetchPredictions(job_request(other.job_id), timeout=RPC_TIMEOUT)),
    ]
    # Its own job's predictions are its to ask for (a training job has none: not a refusal).
    own = rpc_failure(lambda: owner.FetchPredictions(job_request(mine.job_id), timeout=30))
    cancelled = owner.CancelJob(job_request(mine.job_id), timeout=RPC_TIMEOUT)

    # Assert
    assert info.job_id == mine.job_id and metrics.job_id == mine.job_id
    assert plan.job_id == mine.job_id
    assert [code for code, _ in on_other] == [DENIED] * 4
    assert own[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert f"this token is for job {mine.job_id}" in on_other[0][1]
    assert cancelled.state == "cancelled"
    still = admin.GetJob(job_request(other.job_id), timeout=RPC_TIMEOUT)
    assert still.state != "cancelled", "the other job was not touched"


def test_a_job_token_cannot_call_admin_rpcs_on_the_coordinator_or_shards(
    secured: Cluster, admin_token: str
) -> None:
    # Prepare
    job = submit(coordinator(secured, token=admin_token))
    owner = coordinator(secured, token=job.token)
    shard = ps_grpc.ParameterServerStub(secured.channel(secured.shard_address, token=job.token))
    stats = ps_pb2.JobStatsRequest(job_id=job.job_id)

    # Execute
    failures = [
        rpc_failure(lambda: owner.ListJobs(co_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT)),
        rpc_failure(lambda: owner.SubmitJob(iter(tiny_chunks()), timeout=RPC_TIMEOUT)),
        rpc_failure(
            lambda: owner.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
        ),
        rpc_failure(
            lambda: owner.RegisterWorker(co_pb2.RegisterWorkerRequest(host="x"), timeout=5)
        ),
        rpc_failure(
            lambda: owner.ReportFailure(
                co_pb2.ReportFailureRequest(worker_id="w", job_id=job.job_id, error="boom"),
                timeout=RPC_TIMEOUT,
            )
        ),
        rpc_failure(lambda: shard.GetJobStats(stats, timeout=RPC_TIMEOUT)),
    ]

    # Assert
    assert [code for code, _ in failures] == [DENIED] * len(failures)
    assert "needs the admin token" in failures[0][1]


def test_the_admin_token_reaches_shards_and_no_token_does_not(
    secured: Cluster, admin_token: str
) -> None:
    # Prepare: the coordinator initialised the job on the shard with the admin token.
    job = submit(coordinator(secured, token=admin_token))
    request = ps_pb2.JobStatsRequest(job_id=job.job_id)
    admin = ps_grpc.ParameterServerStub(secured.channel(secured.shard_address, token=admin_token))
    anonymous = ps_grpc.ParameterServerStub(secured.channel(secured.shard_address))

    # Execute
    stats = admin.GetJobStats(request, timeout=RPC_TIMEOUT)
    code, _ = rpc_failure(lambda: anonymous.GetJobStats(request, timeout=RPC_TIMEOUT))

    # Assert
    assert stats.job_id == job.job_id
    assert code == UNAUTHENTICATED


def test_health_is_open_and_reflection_needs_the_admin_token(
    secured: Cluster, admin_token: str
) -> None:
    # Prepare
    channel = secured.channel(secured.address)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    # Execute
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT
    )
    anonymous = reflection_pb2_grpc.ServerReflectionStub(channel)
    code, _ = rpc_failure(
        lambda: list(anonymous.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))
    )
    admin = reflection_pb2_grpc.ServerReflectionStub(
        secured.channel(secured.address, token=admin_token)
    )
    replies = list(admin.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))

    # Assert
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert code == UNAUTHENTICATED
    names = {s.name for s in replies[0].list_services_response.service}
    assert "pscluster.v1.Coordinator" in names


def test_without_an_admin_token_everything_is_open_and_no_job_token_is_issued(
    make_cluster: Callable[..., Cluster], caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    with caplog.at_level(logging.WARNING, logger="pscluster.transport.server"):
        cluster = make_cluster()
    anonymous = coordinator(cluster)

    # Execute
    info = submit(anonymous)

    # Assert
    warnings = [r for r in caplog.records if "this cluster is open" in r.getMessage()]
    assert len(warnings) == 2, "one warning per server (the shard and the coordinator)"
    assert info.job_id and info.token == ""
    assert anonymous.GetJob(job_request(info.job_id), timeout=RPC_TIMEOUT).job_id == info.job_id


def test_job_tokens_are_bound_to_the_job_and_the_admin_token() -> None:
    # Prepare
    tokens = JobTokens("a" * 32)
    token = tokens.issue("j-1234abcd")

    # Assert
    assert tokens.verify(token) == "j-1234abcd"
    assert JobTokens("b" * 32).verify(token) is None, "another cluster's key"
    assert tokens.verify(token.replace("j-1234abcd", "j-1234abce")) is None
    assert tokens.verify(token[:-1]) is None
    assert tokens.verify("a" * 32) is None


def test_token_settings_are_checked_at_start(tmp_path: Path) -> None:
    folder = tmp_path
    empty = folder / "empty"
    empty.write_text("\n")

    with pytest.raises(TokenConfigError, match="at least 16"):
        admin_token(Settings(admin_token="short"))  # type: ignore[arg-type]
    with pytest.raises(TokenConfigError, match="is empty"):
        admin_token(Settings(admin_token_file=empty))
    with pytest.raises(TokenConfigError, match="cannot read"):
        admin_token(Settings(admin_token_file=folder / "missing"))
    good = folder / "token"
    good.write_text("x" * 20 + "\n")
    assert admin_token(Settings(admin_token_file=good)) == "x" * 20


def test_cli_submit_prints_the_job_token_once_and_the_cli_sends_tokens(
    secured: Cluster, admin_token: str
) -> None:
    from typer.testing import CliRunner

    from pscluster.client.cli import app

    # Prepare
    root = Path(__file__).resolve().parents[2]
    runner = CliRunner()
    where = ["--address", secured.address]

    # Execute
    submitted = runner.invoke(
        app, ["submit", str(root / "examples" / "digits.yaml"), *where, "--token", admin_token]
    )
    job_id = submitted.stdout.strip()
    token = submitted.stderr.split("no copy): ", 1)[1].split()[0]
    watched = runner.invoke(app, ["jobs", *where, "--token", token])
    anonymous = runner.invoke(app, ["jobs", *where])

    # Assert
    assert submitted.exit_code == 0, submitted.output
    assert job_id.startswith("j-") and "\n" not in job_id, "stdout is the job id alone"
    assert token.startswith(f"pscj.{job_id}.")
    assert watched.exit_code == 1 and "PERMISSION_DENIED" in watched.output
    assert anonymous.exit_code == 1 and "UNAUTHENTICATED" in anonymous.output
    assert "Traceback" not in watched.output + anonymous.output
