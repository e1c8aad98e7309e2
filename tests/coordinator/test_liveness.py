"""No silent hangs: dead workers lose their leases, unreachable shards and stalls are named."""

from __future__ import annotations

import socket
from collections.abc import Callable

import grpc

from pscluster.config import Settings
from pscluster.server.main import serve as serve_shard
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.coordinator.conftest import (
    RPC_TIMEOUT,
    WAIT,
    HandWorker,
    Running,
    Shards,
    get_job,
    plan_of,
    submit,
    wait_for_job,
)
from tests.support import rpc_code, tiny_job, wait_for


def test_a_silent_worker_dies_and_its_partition_goes_to_another(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses, worker_timeout_seconds=1.0)
    info = submit(running.stub, tiny_job(partitions=2))
    silent, alive = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    lost = silent.acquire()
    assert (lost.kind, lost.partition) == (co_pb2.TASK_KIND_TRAIN, 0)

    def members() -> list[list[str]]:
        return [list(shards.stats(a, info.job_id).members) for a in shards.addresses]

    assert members() == [[silent.worker_id]] * 2

    # Execute: only one of them keeps its heartbeats up.
    def silent_is_gone() -> bool:
        assert alive.heartbeat().known
        return members() == [[], []]

    wait_for(silent_is_gone, WAIT, what="the silent worker to leave the shards' members")

    # Assert
    assert not silent.heartbeat().known
    assert rpc_code(silent.acquire) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: silent.complete(lost)) == grpc.StatusCode.NOT_FOUND
    status = running.stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
    assert {w.worker_id: w.alive for w in status.workers} == {
        silent.worker_id: False,
        alive.worker_id: True,
    }
    retaken = alive.acquire()
    assert (retaken.kind, retaken.epoch, retaken.partition) == (co_pb2.TASK_KIND_TRAIN, 0, 0)
    assert members() == [[alive.worker_id]] * 2
    # Back under its old id, the silent worker is a new worker; its old lease stays lost.
    back = HandWorker(running.stub, shards, worker_id=silent.worker_id)
    assert list(back.heartbeat().revoked_leases) == []
    assert back.acquire().partition == 1
    assert rpc_code(lambda: back.complete(lost)) == grpc.StatusCode.FAILED_PRECONDITION


def test_a_job_without_workers_says_so(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses, stall_seconds=0.5)
    info = submit(running.stub, tiny_job())

    def status() -> str:
        return get_job(running.stub, info.job_id).status_message

    wait_for(lambda: "no workers alive" in status(), WAIT, what="the no-worker stall message")
    assert status().startswith("epoch 1/2: 0/3 partitions done, 0 workers")
    idle = HandWorker(running.stub, shards)

    def idle_named() -> bool:
        idle.heartbeat()
        return "no worker has taken a lease for" in status()

    wait_for(idle_named, WAIT, what="the no-lease stall message")


def test_a_stuck_sync_barrier_names_the_missing_worker(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: two members; only one pushes for the open step.
    running = make_coordinator(shards.addresses, stall_seconds=0.5)
    info = submit(running.stub, tiny_job(mode="sync"))
    plan = plan_of(running.stub, info.job_id)
    eager, stuck = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    eager.acquire()
    stuck.acquire()
    replies = eager.push_ones(plan)
    assert [r.outcome for r in replies] == [ps_pb2.PUSH_OUTCOME_BUFFERED] * 2
    expected = f"sync barrier on shard {shards.addresses[0]} waiting on workers [{stuck.worker_id}]"

    # Execute / Assert
    def named() -> bool:
        eager.heartbeat()
        stuck.heartbeat()
        return expected in get_job(running.stub, info.job_id).status_message

    wait_for(named, WAIT, what=f"the status to say {expected!r}")
    assert get_job(running.stub, info.job_id).status_message.startswith(
        "epoch 1/2: 0/3 partitions done, 2 workers; stalled for"
    )


def test_a_job_stalled_past_its_limit_with_its_leases_held_fails_with_the_reason(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: the stuck barrier above, past PSC_STALL_FAIL_SECONDS, while both workers beat
    running = make_coordinator(shards.addresses, stall_seconds=0.5, stall_fail_seconds=2.0)
    info = submit(running.stub, tiny_job(mode="sync"))
    plan = plan_of(running.stub, info.job_id)
    eager, stuck = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    eager.acquire()
    stuck.acquire()
    eager.push_ones(plan)

    # Execute
    def ended() -> bool:
        eager.heartbeat()
        stuck.heartbeat()
        return get_job(running.stub, info.job_id).state == "failed"

    wait_for(ended, WAIT, what="the stalled job to fail")

    # Assert: the error says how long, the limit, and what it waited for
    error = get_job(running.stub, info.job_id).error
    assert error.startswith("no progress for "), error
    assert "(PSC_STALL_FAIL_SECONDS=2): sync barrier on shard" in error, error
    assert f"waiting on workers [{stuck.worker_id}]" in error, error


def test_a_job_without_workers_waits_past_the_stall_limit(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses, stall_seconds=0.2, stall_fail_seconds=0.5)
    info = submit(running.stub, tiny_job())

    wait_for(
        lambda: (
            "stalled for 2 s: no workers alive" in get_job(running.stub, info.job_id).status_message
        ),
        WAIT,
        what="two seconds of stall without workers",
    )

    assert get_job(running.stub, info.job_id).state == "running"


def _closed_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_shard_keeps_the_job_pending_until_it_comes(
    make_coordinator: Callable[..., Running],
) -> None:
    # Prepare
    port = _closed_port()
    address = f"127.0.0.1:{port}"
    running = make_coordinator([address])
    # Execute
    info = submit(running.stub, tiny_job())
    # Assert
    assert info.state == "pending"
    assert info.status_message.startswith(f"pending: shard {address} unreachable")
    status = running.stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
    assert [(s.address, s.healthy) for s in status.shards] == [(address, False)]
    assert "unreachable" in status.shards[0].error
    assert rpc_code(
        lambda: list(
            running.stub.FetchModel(co_pb2.GetJobRequest(job_id=info.job_id), timeout=RPC_TIMEOUT)
        )
    ) == (grpc.StatusCode.FAILED_PRECONDITION)
    # The shard comes up: the monitor's retry starts the job.
    shard = serve_shard(Settings(host="127.0.0.1", grace_seconds=0.0), port=port)
    try:
        wait_for_job(running.stub, info.job_id, "running")
        status = running.stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
        assert [(s.address, s.healthy, s.error) for s in status.shards] == [(address, True, "")]
    finally:
        running.close()
        shard.stop(0)


def test_cluster_status_shows_what_each_worker_does(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job())
    busy, idle = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    lease = busy.acquire()
    status = running.stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
    assert [(s.address, s.healthy) for s in status.shards] == [(a, True) for a in shards.addresses]
    workers = {w.worker_id: (w.alive, w.job_id, w.task, w.host) for w in status.workers}
    assert lease.end_batch > lease.first_batch == 0
    assert workers == {
        busy.worker_id: (True, info.job_id, f"train e0/p0 b0-{lease.end_batch}", "test"),
        idle.worker_id: (True, "", "idle", "test"),
    }
    assert all(0 <= w.last_heartbeat_age < 5 for w in status.workers)
    assert list(get_job(running.stub, info.job_id).workers) == [busy.worker_id]
