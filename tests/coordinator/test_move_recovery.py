"""A coordinator that stops in the middle of a move finishes or undoes it when it starts again
(pscluster.coordinator.move_recovery): on real shards over gRPC, a mover whose commit never
happens (the coordinator dies there) leaves its move in the store, and the recovery run by the
next coordinator rolls it forward when every new shard adopted, or back when one did not,
the job's values then read whole and unchanged from wherever it ends up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.coordinator import store as st
from pscluster.coordinator.memory_store import MemoryStore
from pscluster.coordinator.move_calls import Held, MoveCalls
from pscluster.coordinator.move_plan import LostRange, plan_move
from pscluster.coordinator.move_recovery import Verdict, decide, recover
from pscluster.coordinator.moves import JobMover
from pscluster.coordinator.shard_directory import Slot
from pscluster.coordinator.shard_init import layout_configs
from pscluster.coordinator.sqlite_store import SqliteStore
from pscluster.server.main import ShardServer, serve
from pscluster.shard_client import JobShards, ShardClient, ShardError, ShardRange
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.coordinator.conftest import (
    WAIT,
    coordinator_settings,
    get_job,
    plan_of,
    start_coordinator,
    submit,
)
from tests.server.relayout import momentum_sgd
from tests.support import tiny_job, wait_for

N = 3000


class Died(Exception):
    """The coordinator stopped here."""


def _die(job: st.JobRecord) -> None:
    raise Died(job.job_id)


@pytest.fixture
def settings() -> Settings:
    return Settings(host="127.0.0.1", pull_wait_seconds=5.0, grace_seconds=0.0, chunk_bytes=1024)


@pytest.fixture
def servers(settings: Settings) -> Iterator[list[ShardServer]]:
    running = [serve(settings, port=0) for _ in range(3)]
    yield running
    for server in running:
        server.stop(0)


@pytest.fixture
def shards(settings: Settings) -> Iterator[ShardClient]:
    client = ShardClient(settings)
    yield client
    client.close()


def _address(server: ShardServer) -> str:
    return f"127.0.0.1:{server.port}"


def _job_on(shards: ShardClient, addresses: list[str], values: torch.Tensor) -> st.JobRecord:
    """An async momentum-SGD job over ``addresses``, as the coordinator records and starts it."""
    spec = co_pb2.JobSpec(mode="async", optimizer=momentum_sgd())
    parts = torch.arange(N).tensor_split(len(addresses))
    slices = [
        st.ShardSlice(a, int(p[0]), len(p), f"s{i}")
        for i, (a, p) in enumerate(zip(addresses, parts, strict=True))
    ]
    job = st.JobRecord(
        "j", "n", spec.SerializeToString(), "async", 1, 1, N, slices, state=st.RUNNING,
        layout_generation=1,
    )  # fmt: skip
    configs = layout_configs(job)
    shards.init_job(
        [
            (s.address, c, values[s.start : s.start + s.length])
            for s, c in zip(slices, configs, strict=True)
        ]
    )
    shards.set_members([s.address for s in slices], "j", ["w1"], 1)
    return job


def _read(shards: ShardClient, job: st.JobRecord) -> torch.Tensor:
    """The job's values as an observer reads them through its (stored) plan."""
    ranges = [ShardRange(s.address, s.start, s.length) for s in job.shards]
    view = JobShards(shards, job.job_id, ranges, job.layout_generation)
    return view.pull("", None, 5.0).values


def _two_to_three_cut_short(
    shards: ShardClient, addresses: list[str], seed: int
) -> tuple[torch.Tensor, st.JobRecord, MemoryStore]:
    """A job on the first two ``addresses`` (its values, its record) and the store of a
    coordinator that died at its first commit while moving it onto all three."""
    values = torch.randn(N, generator=torch.Generator().manual_seed(seed))
    job = _job_on(shards, addresses[:2], values)
    store = MemoryStore()
    plan = plan_move(job, [Slot(f"s{i}", a) for i, a in enumerate(addresses)])
    assert plan is not None
    with pytest.raises(Died):
        JobMover(shards, _die, 5.0, store).move(plan)
    assert [m.job_id for m in store.moves()] == ["j"]
    return values, job, store


def _recovered(
    shards: ShardClient, store: MemoryStore, job: st.JobRecord
) -> tuple[Verdict, st.JobRecord]:
    """The next coordinator's recovery; the job's record after it."""
    committed: list[st.JobRecord] = []
    mover = JobMover(shards, committed.append, 5.0, store)
    (move,) = store.moves()
    verdict, _ = recover(mover, MoveCalls(shards), job, move)
    assert store.moves() == []
    return verdict, committed[-1] if committed else job


def test_a_move_every_new_shard_adopted_is_rolled_forward(
    shards: ShardClient, servers: list[ShardServer]
) -> None:
    # Prepare: a job on two shards, moved onto three by a coordinator that died at the commit
    a, b, c = (_address(s) for s in servers)
    values, job, store = _two_to_three_cut_short(shards, [a, b, c], seed=1)

    # Execute
    verdict, after = _recovered(shards, store, job)

    # Assert: on three shards at the next generation, every value where it was
    assert verdict is Verdict.FORWARD
    assert [s.address for s in after.shards] == [a, b, c] and after.layout_generation == 2
    assert torch.equal(_read(shards, after), values)


def test_a_move_a_new_shard_did_not_adopt_is_rolled_back(
    shards: ShardClient, servers: list[ShardServer]
) -> None:
    # Prepare: the new shard dies as the move begins; the mover undoes the move (the kept
    # shards take their copies back) but dies at the commit of that
    a, b, c = (_address(s) for s in servers)
    servers[2].stop(0)
    values, job, store = _two_to_three_cut_short(shards, [a, b, c], seed=2)

    # Execute
    verdict, after = _recovered(shards, store, job)

    # Assert: back on its two shards, past the move's generation, nothing changed
    assert verdict is Verdict.BACK
    assert [s.address for s in after.shards] == [a, b] and after.layout_generation == 3
    assert torch.equal(_read(shards, after), values)


class _RestartedAfterAdopting(ShardClient):
    """The real client, except that every restore is answered as a shard answers that
    restarted after its adoption: the copy it replaced was kept in memory, and is gone."""

    def restore_job(
        self, address: str, job_id: str, layout_generation: int
    ) -> ps_pb2.AdoptJobReply:
        message = f"job {job_id}: no copy an adoption replaced is kept here"
        raise ShardError(address, grpc.StatusCode.FAILED_PRECONDITION, message)


def test_a_live_move_that_cannot_be_undone_says_the_job_cannot_go_on(
    settings: Settings, servers: list[ShardServer]
) -> None:
    # Prepare: the new shard is down, so its adoption fails after the kept shards' succeeded;
    # the kept shards cannot take their copies back
    a, b, c = (_address(s) for s in servers)
    servers[2].stop(0)
    client = _RestartedAfterAdopting(settings)
    job = _job_on(client, [a, b], torch.randn(N, generator=torch.Generator().manual_seed(4)))
    store = MemoryStore()
    plan = plan_move(job, [Slot(f"s{i}", x) for i, x in enumerate([a, b, c])])
    assert plan is not None

    # Execute
    with pytest.raises(LostRange) as lost:
        JobMover(client, lambda record: None, 5.0, store).move(plan)
    client.close()

    # Assert: it names the shards whose part is gone and says the job cannot go on (the
    # scaler fails the job with this message); the move is no longer pending
    assert f"shard(s) {a}, {b} could not take back" in str(lost.value)
    assert "cannot go on" in str(lost.value)
    assert store.moves() == []


def _record(addresses: list[str], generation: int) -> st.JobRecord:
    slices = [st.ShardSlice(a, i, 1) for i, a in enumerate(addresses)]
    n = len(slices)
    return st.JobRecord("j", "n", b"", "async", 1, 1, n, slices, layout_generation=generation)


def test_the_verdict_follows_the_stored_record_then_what_the_shards_hold() -> None:
    move = st.MoveRecord("j", 2, _record(["a", "b", "c"], 2).shards)
    before = _record(["a", "b"], 1)
    # stored already: the calls after it are made again
    assert decide(_record(["a", "b", "c"], 2), move, []) is Verdict.COMMITTED
    assert decide(_record(["a", "b"], 3), move, []) is Verdict.UNDONE
    # not stored: the shards say
    assert decide(before, move, [2, 2, 2]) is Verdict.FORWARD
    assert decide(before, move, [2, 1, Held.NOTHING]) is Verdict.BACK
    assert decide(before, move, [Held.UNKNOWN, 2, 2]) is Verdict.ASK_AGAIN  # "a" may have
    assert decide(before, move, [2, 2, Held.UNKNOWN]) is Verdict.BACK  # "c" is needed by none


def test_a_restarted_coordinator_rolls_forward_the_move_its_predecessor_cut_short(
    tmp_path: Path, servers: list[ShardServer], shards: ShardClient
) -> None:
    # Prepare: a coordinator starts a job on two shards and stops; the move onto three that it
    # was making when it stopped got as far as every adoption (played here by a mover on its
    # store whose commit never comes)
    a, b, c = (_address(s) for s in servers)
    settings = coordinator_settings(tmp_path, [a, b])
    first = start_coordinator(settings)
    job_id = submit(first.stub, tiny_job()).job_id
    wait_for(lambda: get_job(first.stub, job_id).state == "running", WAIT, what="running")
    first.close()
    store = SqliteStore(settings.database())
    job = store.get_job(job_id)
    assert job is not None
    before = _read(shards, job)
    plan = plan_move(job, [Slot("", a), Slot("", b), Slot("", c)])
    assert plan is not None
    with pytest.raises(Died):
        JobMover(shards, _die, 5.0, store).move(plan)
    store.close()

    # Execute: the next coordinator on the same state
    second = start_coordinator(settings)
    try:
        wait_for(lambda: plan_of(second.stub, job_id).layout_generation == 2, WAIT, what="the move")
        got = plan_of(second.stub, job_id)
        events = second.stub.GetMetrics(co_pb2.GetJobRequest(job_id=job_id), timeout=WAIT).events
    finally:
        second.close()

    # Assert: the job is on the three shards, its values whole, and says what happened
    assert [r.address for r in got.shards] == [a, b, c]
    moved = replace(job, shards=plan.new.shards, layout_generation=2)
    assert torch.equal(_read(shards, moved), before)
    assert any("cut short by a coordinator restart" in e.message for e in events), events
