"""A shard process with PSC_METRICS_PORT serves its jobs' series at /metrics, and with
PSC_LOG_FORMAT=json writes one JSON object per log line, the job's lines carrying its id."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
import torch

from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc
from tests.telemetry.conftest import (
    METRICS_AT,
    Process,
    json_lines,
    scrape,
    start_process,
    total,
    value,
)

SERVING = re.compile(r"serving pscluster\.v1\.ParameterServer on 127\.0\.0\.1:(\d+)")
LENGTH = 1000
TIMEOUT = 30.0


@pytest.fixture
def shard() -> Iterator[Process]:
    process = start_process(
        ["-m", "pscluster.server", "--port", "0", "--host", "127.0.0.1"],
        {"PSC_METRICS_PORT": "0", "PSC_LOG_FORMAT": "json", "PSC_LOG_LEVEL": "INFO"},
    )
    try:
        yield process
    finally:
        process.stop()


def _init(stub: ps_grpc.ParameterServerStub, job_id: str) -> None:
    config = ps_pb2.ShardJobConfig(
        job_id=job_id,
        length=LENGTH,
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.01),
    )
    data = bytes(wire.encode(torch.zeros(LENGTH)))
    chunks = [ps_pb2.InitJobChunk(config=config), ps_pb2.InitJobChunk(data=data)]
    stub.InitJob(iter(chunks), timeout=TIMEOUT)


def _push(
    stub: ps_grpc.ParameterServerStub, job_id: str, worker: str, seq: int, length: int = LENGTH
) -> ps_pb2.PushReply:
    header = ps_pb2.PushHeader(
        job_id=job_id,
        worker_id=worker,
        seq=seq,
        base_version=0,
        length=length,
        dtype=common_pb2.DTYPE_FLOAT32,
        batch_size=1,
    )
    data = bytes(wire.encode(torch.ones(length)))
    chunks = [ps_pb2.PushChunk(header=header), ps_pb2.PushChunk(data=data)]
    reply: ps_pb2.PushReply = stub.Push(iter(chunks), timeout=TIMEOUT)
    return reply


def test_shard_metrics_move_with_pushes_pulls_and_refusals(shard: Process) -> None:
    # Prepare: the ports the process bound, from its (JSON) log lines.
    port = int(shard.wait_for(SERVING).group(1))
    metrics = shard.wait_for(METRICS_AT)
    url = f"http://{metrics.group(1)}:{metrics.group(2)}/metrics"
    channel = open_channel(f"127.0.0.1:{port}")
    wait_ready(channel, timeout=10)
    stub = ps_grpc.ParameterServerStub(channel)
    before = scrape(url)
    assert value(before, "pscluster_shard_jobs") == 0

    # Execute: 5 pushes all computed on version 0 (so their staleness is 0, 1, 2, 3, 4), 3
    # pulls, a push from a worker that is not a member, and one with the wrong length.
    _init(stub, "tj")
    stub.SetMembers(
        ps_pb2.SetMembersRequest(job_id="tj", worker_ids=["w1"], generation=1), timeout=TIMEOUT
    )
    applied = 5
    for seq in range(1, applied + 1):
        assert _push(stub, "tj", "w1", seq).outcome == ps_pb2.PUSH_OUTCOME_APPLIED
    for _ in range(3):
        list(stub.Pull(ps_pb2.PullRequest(job_id="tj", worker_id="w1"), timeout=TIMEOUT))
    with pytest.raises(grpc.RpcError) as not_member:
        _push(stub, "tj", "intruder", 1)
    assert not_member.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as invalid:
        _push(stub, "tj", "w1", applied + 1, length=LENGTH - 1)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A push to a job the shard does not hold: refused, and no series named after it.
    with pytest.raises(grpc.RpcError):
        _push(stub, "no-such-job", "w1", 1)
    after = scrape(url)
    channel.close()

    # Assert: counters equal what was done, refusals under their reason.
    job = {"job_id": "tj"}
    assert value(after, "pscluster_shard_jobs") == 1
    assert value(after, "pscluster_shard_pushes_received_total", **job) == applied + 2
    assert value(after, "pscluster_shard_pushes_applied_total", **job) == applied
    assert value(after, "pscluster_shard_pushes_rejected_total", **job, reason="not_member") == 1
    assert value(after, "pscluster_shard_pushes_rejected_total", **job, reason="invalid") == 1
    assert value(after, "pscluster_shard_pulls_total", **job) == 3
    assert value(after, "pscluster_shard_pushed_bytes_total", **job) == applied * LENGTH * 4
    assert value(after, "pscluster_shard_pulled_bytes_total", **job) == 3 * LENGTH * 4
    assert value(after, "pscluster_shard_parameter_version", **job) == applied
    assert value(after, "pscluster_shard_members", **job) == 1
    # Staleness: an exact histogram of 0..4.
    assert value(after, "pscluster_shard_push_staleness_count", **job) == applied
    assert value(after, "pscluster_shard_push_staleness_sum", **job) == 0 + 1 + 2 + 3 + 4
    assert value(after, "pscluster_shard_push_staleness_bucket", **job, le="0.0") == 1
    assert value(after, "pscluster_shard_push_staleness_bucket", **job, le="2.0") == 3
    assert value(after, "pscluster_shard_push_staleness_bucket", **job, le="4.0") == 5
    assert value(after, "pscluster_shard_push_staleness_bucket", **job, le="+Inf") == 5
    # Latency: one observation per push that reached the job, by outcome.
    latency = "pscluster_shard_push_duration_seconds_count"
    assert value(after, latency, **job, outcome="applied") == applied
    assert value(after, latency, **job, outcome="error") == 2
    assert total(after, latency) == applied + 2, "the push to an unknown job is not timed"
    assert total(after, "pscluster_shard_push_duration_seconds_sum", **job) > 0
    assert not [k for k in after if ("job_id", "no-such-job") in k[1]]


def test_shard_series_of_a_dropped_job_disappear_and_logs_are_json(shard: Process) -> None:
    # Prepare
    port = int(shard.wait_for(SERVING).group(1))
    metrics = shard.wait_for(METRICS_AT)
    url = f"http://{metrics.group(1)}:{metrics.group(2)}/metrics"
    channel = open_channel(f"127.0.0.1:{port}")
    wait_ready(channel, timeout=10)
    stub = ps_grpc.ParameterServerStub(channel)
    _init(stub, "gone")
    stub.SetMembers(
        ps_pb2.SetMembersRequest(job_id="gone", worker_ids=["w1"], generation=1), timeout=TIMEOUT
    )
    _push(stub, "gone", "w1", 1)
    assert value(scrape(url), "pscluster_shard_pushes_applied_total", job_id="gone") == 1

    # Execute
    stub.DropJob(ps_pb2.DropJobRequest(job_id="gone"), timeout=TIMEOUT)
    after = scrape(url)
    channel.close()
    shard.stop()

    # Assert: no series left for the job; every log line is a JSON record, the job's carry its id.
    assert not [k for k in after if ("job_id", "gone") in k[1]]
    assert value(after, "pscluster_shard_jobs") == 0
    records = list(json_lines(shard.lines))
    assert records, "the shard logged nothing"
    for record in records:
        assert {"ts", "level", "logger", "message", "role"} <= record.keys(), record
        assert record["role"] == "shard"
    about_job = [r for r in records if "gone" in str(r["message"])]
    assert len(about_job) >= 2, "InitJob, membership and drop lines"
    assert all(r.get("job_id") == "gone" for r in about_job), about_job
