"""Shards that register, over real sockets: a coordinator with no shard list, shards served in
this process that announce themselves, and the refusals at the door."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pscluster.config import Settings
from pscluster.coordinator.main import serve as serve_coordinator
from pscluster.server.main import ShardServer
from pscluster.server.main import serve as serve_shard
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from tests.coordinator.conftest import (
    WAIT,
    Running,
    coordinator_settings,
    plan_of,
    start_coordinator,
    submit,
)
from tests.support import rpc_failure, tiny_job, wait_for

BEAT = 0.2


@pytest.fixture
def start_shard() -> Iterator[Callable[[str, str], ShardServer]]:
    """Shards that register with the coordinator at ``coordinator`` (stopped at teardown)."""
    started: list[ShardServer] = []

    def start(coordinator: str, shard_id: str) -> ShardServer:
        settings = Settings(
            host="127.0.0.1", coordinator=coordinator, shard_id=shard_id, grace_seconds=0.0
        )
        server = serve_shard(settings, port=0)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(0)


def start_coordinator_on(settings: Settings, port: int) -> Running:
    """A coordinator on a given port (the one its shards know), with a stub on it."""
    handle = serve_coordinator(settings, port=port)
    channel = open_channel(f"127.0.0.1:{port}", settings)
    wait_ready(channel, timeout=10)
    return Running(handle, co_grpc.CoordinatorStub(channel), channel)


def listed(stub: co_grpc.CoordinatorStub) -> dict[str, co_pb2.RegisteredShard]:
    reply = stub.ListShards(co_pb2.ListShardsRequest(), timeout=WAIT)
    return {s.shard_id: s for s in reply.shards}


def live_ids(stub: co_grpc.CoordinatorStub) -> set[str]:
    return {sid for sid, s in listed(stub).items() if s.live}


def test_a_job_submitted_while_no_shard_is_registered_is_refused_with_what_to_do(
    make_coordinator: Callable[..., Running],
) -> None:
    # Prepare
    running = make_coordinator([])
    # Execute
    code, details = rpc_failure(lambda: submit(running.stub, tiny_job()))
    # Assert
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no live shards (none has registered)" in details
    assert "PSC_COORDINATOR" in details and "PSC_SHARDS" in details


def test_registered_shards_take_jobs_and_a_shard_that_moves_takes_its_jobs_along(
    make_coordinator: Callable[..., Running],
    start_shard: Callable[[str, str], ShardServer],
) -> None:
    # Prepare: a coordinator with no list, two shards that register with it
    running = make_coordinator([], heartbeat_seconds=BEAT, shard_timeout_seconds=5.0)
    stub = running.stub
    coordinator = f"127.0.0.1:{running.handle.port}"
    a, b = start_shard(coordinator, "ps-a"), start_shard(coordinator, "ps-b")
    wait_for(lambda: live_ids(stub) == {"ps-a", "ps-b"}, WAIT, what="both shards live")

    # Execute: a job, then another process claiming ps-a, then ps-a stops and comes back
    # at another port (as a rescheduled pod at a new IP would)
    job_id = submit(stub, tiny_job()).job_id
    placed = [s.address for s in plan_of(stub, job_id).shards]
    code, details = rpc_failure(
        lambda: stub.RegisterShard(
            co_pb2.RegisterShardRequest(shard_id="ps-a", address="127.0.0.1:1"), timeout=WAIT
        )
    )
    a.stop(0)
    left = listed(stub)["ps-a"]
    moved = start_shard(coordinator, "ps-a")
    wait_for(lambda: "ps-a" in live_ids(stub), WAIT, what="ps-a registered again")

    # Assert: placed on both registered shards, each listing the job
    assert sorted(placed) == sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    assert all(list(s.jobs) == [job_id] for s in listed(stub).values())
    # ... the impostor refused while ps-a was live, naming the id's address and the fix
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert f"'ps-a' is live at 127.0.0.1:{a.port}" in details and "PSC_SHARD_ID" in details
    # ... ps-a not live as soon as it stopped (it said it was leaving), and the job's range on
    # it followed it to its new address
    assert not left.live
    assert listed(stub)["ps-a"].address == f"127.0.0.1:{moved.port}"
    assert sorted(s.address for s in plan_of(stub, job_id).shards) == sorted(
        [f"127.0.0.1:{moved.port}", f"127.0.0.1:{b.port}"]
    )


def test_a_restarted_coordinator_knows_its_shards_and_they_register_again(
    tmp_path: Path, start_shard: Callable[[str, str], ShardServer]
) -> None:
    # Prepare: two shards registered with a coordinator; ps-b stops, then the coordinator
    settings = coordinator_settings(tmp_path, [], heartbeat_seconds=BEAT)
    first = start_coordinator(settings)
    port = first.handle.port
    start_shard(f"127.0.0.1:{port}", "ps-a")
    b = start_shard(f"127.0.0.1:{port}", "ps-b")
    wait_for(lambda: live_ids(first.stub) == {"ps-a", "ps-b"}, WAIT, what="both live")
    b.stop(0)
    first.close()
    # Execute: a new coordinator on the same state and port
    second = start_coordinator_on(settings, port)
    try:
        wait_for(lambda: live_ids(second.stub) == {"ps-a"}, WAIT, what="ps-a live again")
        known = listed(second.stub)
    finally:
        second.close()
    # Assert: ps-a, which kept running, registered again; ps-b is known from the store alone
    assert sorted(known) == ["ps-a", "ps-b"]
    assert not known["ps-b"].live and known["ps-b"].last_seen_age == -1.0
    assert known["ps-b"].address == f"127.0.0.1:{b.port}"
