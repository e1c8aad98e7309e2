"""The one shard client against real shards on free ports: every shard at once, each answer
on its own, failures as ShardError naming the shard."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.server.main import ShardServer, serve
from pscluster.server.servicer import SERVICE_NAME, ParameterServerServicer, add_to_server
from pscluster.server.shard import Shard
from pscluster.shard_client import JobShards, ShardClient, ShardError, ShardRange, Snapshot
from pscluster.transport import wire
from pscluster.transport.server import RunningServer, build_server
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

PULL_DELAY = 1.0  # seconds each slowed shard holds a pull
N = 12


def _settings() -> Settings:
    return Settings(host="127.0.0.1", pull_wait_seconds=5.0, grace_seconds=0.0, chunk_bytes=1024)


def _config(job_id: str, start: int, length: int, mode: str = "async") -> ps_pb2.ShardJobConfig:
    return ps_pb2.ShardJobConfig(
        job_id=job_id,
        start=start,
        length=length,
        mode=mode,
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=1.0),
    )


class SlowPulls(ParameterServerServicer):
    """A shard whose every pull takes ``PULL_DELAY`` before it starts (a slow disk, a far
    link): what tells one pull at a time from all at once."""

    def Pull(
        self, request: ps_pb2.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.PullChunk | bytes]:
        time.sleep(PULL_DELAY)
        yield from super().Pull(request, context)


@pytest.fixture
def client() -> Iterator[ShardClient]:
    shards = ShardClient(_settings())
    yield shards
    shards.close()


@pytest.fixture
def slow_shards() -> Iterator[list[str]]:
    settings = _settings()
    servers: list[RunningServer] = []
    for _ in range(3):
        servicer = SlowPulls(Shard(), settings)
        servers.append(
            build_server(
                settings,
                0,
                [lambda server, s=servicer: add_to_server(s, server)],  # type: ignore[misc]
                [SERVICE_NAME],
            )
        )
    yield [f"127.0.0.1:{s.port}" for s in servers]
    for s in servers:
        s.stop(0)


@pytest.fixture
def one_shard() -> Iterator[str]:
    running: ShardServer = serve(_settings(), port=0)
    yield f"127.0.0.1:{running.port}"
    running.stop(0)


def test_a_job_on_three_slowed_shards_is_pulled_in_the_time_of_one(
    client: ShardClient, slow_shards: list[str]
) -> None:
    # Prepare: a job spread over three shards whose pulls each take PULL_DELAY
    values = torch.arange(float(N))
    ranges = [ShardRange(a, 4 * i, 4) for i, a in enumerate(slow_shards)]
    inits = [
        (r.address, _config("par", r.start, r.length), values[r.start : r.start + r.length])
        for r in ranges
    ]
    assert client.init_job(inits) == [True, True, True]

    # Execute: the coordinator's read of the whole model
    started = time.monotonic()
    live = client.pull_all("par", ranges)
    took = time.monotonic() - started

    # Assert: all three at once (one at a time would take 3 x PULL_DELAY), stitched in order
    assert took < 2 * PULL_DELAY, f"pulling 3 shards took {took:.2f}s"
    assert torch.equal(live.values, values)
    assert live.versions == [0, 0, 0]


def test_init_is_idempotent_and_failures_name_their_shard(
    client: ShardClient, one_shard: str
) -> None:
    init = [(one_shard, _config("j", 0, N), torch.zeros(N))]
    assert client.init_job(init) == [True]
    assert client.init_job(init) == [False]  # a retried init: the shard had it already
    assert client.health([one_shard, "127.0.0.1:1"])[0] is None

    with pytest.raises(ShardError) as missing:
        client.pull_all("no-such-job", [ShardRange(one_shard, 0, N)])
    assert missing.value.address == one_shard
    assert missing.value.status == grpc.StatusCode.NOT_FOUND
    assert one_shard in str(missing.value)
    assert client.drop_job([one_shard], "no-such-job") == []  # never had it: fine
    (stats,) = client.job_stats([one_shard], "j")
    assert isinstance(stats, common_pb2.ShardJobStats) and stats.length == N


def test_sync_answers_already_pushed_and_next_version_over_sockets(
    client: ShardClient, one_shard: str
) -> None:
    # Prepare: a sync job with two members, each pulling its parameters
    ranges = [ShardRange(one_shard, 0, N)]
    client.init_job([(one_shard, _config("s", 0, N, mode="sync"), torch.zeros(N))])
    client.set_members([one_shard], "s", ["a", "b"], generation=1)
    job = JobShards(client, "s", ranges)
    base: Snapshot = job.pull("a", None, timeout=5.0)
    grad = {0: wire.encode(torch.ones(N))}

    # Execute
    first = job.push("a", 1, grad, "none", base, batch_size=4, timeout=5.0)[0]
    again = job.push("a", 2, grad, "none", base, batch_size=4, timeout=5.0)[0]
    closing = job.push("b", 1, grad, "none", base, batch_size=4, timeout=5.0)[0]

    # Assert: every reply names the version the sender's next pull waits for
    assert isinstance(first, ps_pb2.PushReply) and isinstance(again, ps_pb2.PushReply)
    assert isinstance(closing, ps_pb2.PushReply)
    assert (first.outcome, first.next_version) == (ps_pb2.PUSH_OUTCOME_BUFFERED, 1)
    assert (again.outcome, again.next_version) == (ps_pb2.PUSH_OUTCOME_ALREADY_PUSHED, 1)
    assert "already pushed for step 0" in again.reason
    assert (closing.outcome, closing.next_version) == (ps_pb2.PUSH_OUTCOME_APPLIED, 1)
    after = job.pull("a", [first.next_version], timeout=5.0)
    assert after.versions == [1]
    assert torch.equal(after.values, torch.full((N,), -1.0))  # the step's one average, once
    (stats,) = client.job_stats([one_shard], "s")
    assert isinstance(stats, common_pb2.ShardJobStats)
    assert dict(stats.pushes_rejected) == {"already_pushed": 1}
