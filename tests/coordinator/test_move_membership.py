"""A move that meets a membership change half landed, on real shards over gRPC.

A worker's lease ended, so a SetMembers without it reached one of the job's shards and not yet
the other. On the first, the open sync step closed without the departed worker; on the second
it is still open. The mover waits for the change to reach every shard (the skeletons agree on
the membership generation) rather than refusing the move, then moves the job.

A worker's lease began, and its SetMembers reached one shard before the others pushed there and
the other shard after: that shard's step closed without the newcomer and the first waits for
it. The shards are then half a step apart with every worker between two steps, and stay so
until the roster changes again or, as here, the newcomer pushes on the waiting shard alone.
The mover lets the job go on and holds it again until its shards hold one step (or says so
once its wait is over)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from pscluster.config import Settings
from pscluster.coordinator import store as st
from pscluster.coordinator.memory_store import MemoryStore
from pscluster.coordinator.move_plan import MovePlan, plan_move
from pscluster.coordinator.moves import JobMover
from pscluster.coordinator.shard_directory import Slot
from pscluster.coordinator.shard_init import layout_configs
from pscluster.server.main import ShardServer, serve
from pscluster.shard_client import JobShards, ShardClient, ShardRange
from pscluster.transport import wire
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server.relayout import momentum_sgd

N = 1000
LAG = 0.3  # seconds between the change reaching the first shard and the second


@pytest.fixture
def addresses() -> Iterator[list[str]]:
    settings = Settings(host="127.0.0.1", pull_wait_seconds=5.0, grace_seconds=0.0)
    running: list[ShardServer] = [serve(settings, port=0) for _ in range(3)]
    yield [f"127.0.0.1:{server.port}" for server in running]
    for server in running:
        server.stop(0)


@pytest.fixture
def shards() -> Iterator[ShardClient]:
    client = ShardClient(Settings(host="127.0.0.1"))
    yield client
    client.close()


def _sync_job(shards: ShardClient, addresses: list[str]) -> st.JobRecord:
    """A sync job over ``addresses`` with members w1 and w2, as the coordinator starts it."""
    spec = co_pb2.JobSpec(mode="sync", optimizer=momentum_sgd())
    half = N // 2
    slices = [
        st.ShardSlice(addresses[0], 0, half, "s0"),
        st.ShardSlice(addresses[1], half, half, "s1"),
    ]
    job = st.JobRecord(
        "j", "n", spec.SerializeToString(), "sync", 1, 1, N, slices, state=st.RUNNING,
        layout_generation=1,
    )  # fmt: skip
    values = torch.randn(N, generator=torch.Generator().manual_seed(0))
    shards.init_job(
        [
            (s.address, c, values[s.start : s.start + s.length])
            for s, c in zip(slices, layout_configs(job), strict=True)
        ]
    )
    shards.set_members(addresses[:2], "j", ["w1", "w2"], 1)
    return job


def test_a_move_waits_for_a_membership_change_to_reach_every_shard(
    shards: ShardClient, addresses: list[str]
) -> None:
    # Prepare: w1 pushed for step 0 on both shards (open, waiting for w2); w2's departure
    # has reached the second shard only, where the step closed without it.
    job = _sync_job(shards, addresses)
    view = JobShards(shards, "j", [ShardRange(s.address, s.start, s.length) for s in job.shards], 1)
    grad = torch.ones(N)
    parts = {i: wire.encode(grad[r.start : r.start + r.length]) for i, r in enumerate(view.ranges)}
    replies = view.push("w1", 1, parts, "none", view.pull("w1", None, 5.0), 1, timeout=10.0)
    for reply in replies.values():
        assert isinstance(reply, ps_pb2.PushReply), reply
        assert reply.outcome == ps_pb2.PUSH_OUTCOME_BUFFERED, reply
    shards.set_members([addresses[1]], "j", ["w1"], 2)
    plan = plan_move(job, [Slot(f"s{i}", a) for i, a in enumerate(addresses)])
    assert plan is not None

    # Execute: the move starts; the change reaches the first shard LAG seconds later
    moved = _move_meanwhile(
        shards, plan, lambda: shards.set_members([addresses[0]], "j", ["w1"], 2)
    )

    # Assert: moved once the shards agreed, with step 0 closed everywhere (version 1)
    _assert_moved_at_step_one(shards, plan, moved)


def _move_meanwhile(
    shards: ShardClient, plan: MovePlan, meanwhile: Callable[[], None]
) -> co_pb2.JobMove:
    """The move, with ``meanwhile`` run LAG seconds into it."""
    late = threading.Timer(LAG, meanwhile)
    late.start()
    try:
        return JobMover(shards, lambda record: None, 5.0, MemoryStore()).move(plan)
    finally:
        late.join()


def _assert_moved_at_step_one(shards: ShardClient, plan: MovePlan, moved: co_pb2.JobMove) -> None:
    """Moved only once the shards agreed, step 0 closed on every new shard (version 1)."""
    assert moved.moved, moved.reason
    assert moved.quiesce_seconds >= LAG * 0.9, moved
    new = [ShardRange(s.address, s.start, s.length) for s in plan.new.shards]
    after = JobShards(shards, "j", new, plan.new.layout_generation).pull("", None, 5.0)
    assert after.versions == [1, 1, 1]


def _half_a_step_apart(shards: ShardClient, addresses: list[str]) -> tuple[st.JobRecord, MovePlan]:
    """w1 and w2 pushed for step 0 while w3's joining had reached the first shard only: the
    second closed step 0 (version 1), the first holds both pushes and waits for w3."""
    job = _sync_job(shards, addresses)
    view = JobShards(shards, "j", [ShardRange(s.address, s.start, s.length) for s in job.shards], 1)
    shards.set_members([addresses[0]], "j", ["w1", "w2", "w3"], 2)
    for seq, worker in enumerate(("w1", "w2"), start=1):
        parts = {i: wire.encode(torch.ones(r.length)) for i, r in enumerate(view.ranges)}
        view.push(worker, seq, parts, "none", view.pull(worker, None, 5.0), 1, timeout=10.0)
    shards.set_members([addresses[1]], "j", ["w1", "w2", "w3"], 2)
    versions = view.pull("", None, 5.0).versions
    assert versions == [0, 1], versions
    plan = plan_move(job, [Slot(f"s{i}", a) for i, a in enumerate(addresses)])
    assert plan is not None
    return job, plan


def test_a_move_waits_for_shards_half_a_step_apart_to_hold_one_step(
    shards: ShardClient, addresses: list[str]
) -> None:
    # Prepare: the shards half a step apart; w3 pushes where it is waited for LAG seconds into
    # the move (on the first shard only, the one whose step waits for it).
    job, plan = _half_a_step_apart(shards, addresses)
    first = job.shards[0]
    w3 = JobShards(shards, "j", [ShardRange(first.address, first.start, first.length)], 1)

    def newcomer_pushes() -> None:
        base = w3.pull("w3", None, 5.0)  # held while the move holds the job: waits its turn
        w3.push("w3", 1, {0: wire.encode(torch.ones(first.length))}, "none", base, 1, 10.0)

    moved = _move_meanwhile(shards, plan, newcomer_pushes)

    # Assert: moved once both shards had closed step 0
    _assert_moved_at_step_one(shards, plan, moved)


def test_a_move_says_why_when_the_shards_stay_half_a_step_apart(
    shards: ShardClient, addresses: list[str]
) -> None:
    # Prepare: the shards half a step apart, and w3 never pushes
    job, plan = _half_a_step_apart(shards, addresses)

    # Execute
    moved = JobMover(shards, lambda record: None, 1.0, MemoryStore()).move(plan)

    # Assert: not moved, for a reason that says what differed; the job is released, so w3's
    # pull goes through on its old shards as before (held, it would give up).
    assert not moved.moved
    assert "different pushes of the open sync step" in moved.reason, moved.reason
    assert "for 1s" in moved.reason, moved.reason
    old = [ShardRange(s.address, s.start, s.length) for s in job.shards]
    assert JobShards(shards, "j", old, 1).pull("w3", None, 5.0).versions == [0, 1]
