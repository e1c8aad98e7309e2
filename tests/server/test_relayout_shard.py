"""A shard's side of a live re-layout, on real shards over gRPC: HoldJob holds members' pulls
(not pushes, not observers) and lists them, ExportJob reads a held job, AdoptJob installs a
state (the values, the version and the optimizer's momentum go on as if the job had stayed),
MOVED and a newer adoption send every waiter and later request "layout moved", which the
shard client raises as LayoutMovedError and the worker's retry policy does not retry."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from pscluster.errors import LAYOUT_MOVED, LayoutMoved
from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.server.relayout import MovedJobs
from pscluster.shard_client import LayoutMovedError, ShardClient, ShardError
from pscluster.transport.retry import retry
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.trainer import SHARD_RETRY
from tests.server import relayout
from tests.server.relayout import (
    HOLD,
    MOVED,
    RELEASE,
    PullInThread,
    at_generation,
    make_job,
    push,
    view,
    wait_waiting,
)

N = 3000


def _values(seed: int) -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(seed))


# The shard settings, two shards served here and the shard client (tests/server/relayout.py).
settings_fixture = relayout.settings_fixture
first_fixture = relayout.first_fixture
second_fixture = relayout.second_fixture
shards_fixture = relayout.shards_fixture


def _status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    assert isinstance(error, ShardError), error
    return error.status, error.details


def test_hold_waits_members_pulls_lets_pushes_and_observers_through_and_release_frees(
    shards: ShardClient, first: str
) -> None:
    # Prepare
    initial = _values(1)
    job = make_job(shards, first, "j", initial)
    base = job.pull("w1", None, 5.0)

    # Execute: hold, then a member pulls
    reply = shards.hold_job(first, "j", HOLD)
    assert (list(reply.members), list(reply.waiting), reply.version) == (["w1"], [], 0)
    held = PullInThread(job, "w1")
    wait_waiting(shards, first, "j", ["w1"])

    # Assert: an observer reads at once; a push still lands while the member waits
    assert job.pull("", None, 5.0).versions == [0]
    grad = _values(2)
    assert push(job, "w1", 1, grad, base) == 1
    assert held.alive

    # Execute: release
    shards.hold_job(first, "j", RELEASE)
    held.join()

    # Assert: the pull goes on as if nothing happened, and it is no longer counted
    assert held.error is None and held.snapshot is not None
    assert held.snapshot.versions == [1]
    assert torch.allclose(held.snapshot.values, initial - 0.1 * grad)
    assert list(shards.hold_job(first, "j", RELEASE).waiting) == []


def test_a_held_pull_gives_up_soon_naming_the_move(shards: ShardClient, first: str) -> None:
    # Prepare: w1 is in the middle of a step (its pull granted, no push since)
    job = make_job(shards, first, "j", _values(1))
    job.pull("w1", None, 5.0)
    shards.hold_job(first, "j", HOLD)

    # Execute: a pull that may wait 30 s
    started = time.monotonic()
    with pytest.raises(ShardError) as failed:
        job.pull("w1", None, 30.0)

    # Assert: it gave up after the shard's short wait for held pulls, so that a worker held
    # on one shard and mid-step on another pulls every shard again (and waits on each)
    status, details = _status(failed.value)
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "layout move" in details, details
    assert time.monotonic() - started < 10.0
    assert list(shards.hold_job(first, "j", HOLD).waiting) == []


def test_export_only_while_held(shards: ShardClient, first: str) -> None:
    # Prepare
    make_job(shards, first, "j", _values(1))

    # Execute / Assert: never held, then released
    for action in (None, RELEASE):
        if action is not None:
            shards.hold_job(first, "j", HOLD)
            shards.hold_job(first, "j", action)
        with pytest.raises(ShardError) as failed:
            shards.export_job(first, "j")
        status, details = _status(failed.value)
        assert status == grpc.StatusCode.FAILED_PRECONDITION
        assert "not held" in details
    with pytest.raises(ShardError) as missing:
        shards.export_job(first, "nosuch")
    assert missing.value.status == grpc.StatusCode.NOT_FOUND


def test_export_then_adopt_elsewhere_goes_on_as_if_the_job_had_stayed(
    shards: ShardClient, first: str, second: str
) -> None:
    # Prepare: the job, and a copy that never moves, with the same pushes (momentum builds up)
    initial = _values(1)
    job = make_job(shards, first, "j", initial)
    copy = make_job(shards, first, "copy", initial)
    for seq in (1, 2):
        push(job, "w1", seq, _values(10 + seq), job.pull("w1", None, 5.0))
        push(copy, "w1", seq, _values(10 + seq), copy.pull("w1", None, 5.0))
    shards.hold_job(first, "j", HOLD)

    # Execute: export, adopt on the second shard at generation 1, the old one told MOVED
    state = shards.export_job(first, "j")
    adopted = shards.adopt_job(second, "j", 1, at_generation(state, 1))
    moved = shards.hold_job(first, "j", MOVED, 1)

    # Assert: the same values and version there, by the plan of generation 1
    assert (adopted.version, moved.layout_generation) == (2, 1)
    there = view(shards, second, "j", N, layout_generation=1)
    before = there.pull("w1", None, 5.0)
    reference = copy.pull("w1", None, 5.0)
    assert before.versions == reference.versions == [2]
    assert torch.equal(before.values, reference.values)
    assert shards.hold_job(second, "j", HOLD, 1).layout_generation == 1
    shards.hold_job(second, "j", RELEASE, 1)

    # Execute: two more pushes on each
    for seq in (3, 4):
        push(there, "w1", seq, _values(10 + seq), there.pull("w1", None, 5.0))
        push(copy, "w1", seq, _values(10 + seq), copy.pull("w1", None, 5.0))

    # Assert: the momentum came along (without it the values would differ)
    after, expected = there.pull("w1", None, 5.0), copy.pull("w1", None, 5.0)
    assert after.versions == expected.versions == [4]
    assert torch.equal(after.values, expected.values)
    tensors, _ = state_from_bytes(state)
    assert bool(tensors["opt.momentum_buffer"].abs().sum() > 0)


def test_moved_answers_layout_moved_to_waiters_and_every_later_request(
    shards: ShardClient, first: str
) -> None:
    # Prepare: a member's pull held
    job = make_job(shards, first, "j", _values(1))
    base = job.pull("w1", None, 5.0)
    shards.hold_job(first, "j", HOLD)
    held = PullInThread(job, "w1")
    wait_waiting(shards, first, "j", ["w1"])

    # Execute
    shards.hold_job(first, "j", MOVED, 1)
    held.join()

    # Assert: the waiter, then a pull (not retried), a push and a HoldJob
    assert isinstance(held.error, LayoutMovedError), held.error
    attempts = []

    def pull() -> object:
        attempts.append(1)
        return job.pull("w1", None, 5.0)

    with pytest.raises(LayoutMovedError) as later:
        retry(pull, SHARD_RETRY, what="pull")
    assert len(attempts) == 1 and not later.value.unreachable
    pushed = job.push("w1", 1, {0: b"\0" * (4 * N)}, "none", base, 1, timeout=5.0)[0]
    assert isinstance(pushed, LayoutMovedError)
    with pytest.raises(LayoutMovedError) as hold:
        shards.hold_job(first, "j", HOLD)
    for error in (held.error, later.value, pushed, hold.value):
        status, details = _status(error)
        assert status == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith(LAYOUT_MOVED) and "generation 1" in details, details
        assert "plan again" in details


def test_moved_is_idempotent_and_the_id_can_come_back(shards: ShardClient, first: str) -> None:
    # Prepare
    make_job(shards, first, "j", _values(1))
    shards.hold_job(first, "j", MOVED, 1)

    # Execute / Assert: MOVED again answers as the first did; to another generation, the job
    # is no longer here to move
    assert shards.hold_job(first, "j", MOVED, 1).layout_generation == 1
    with pytest.raises(LayoutMovedError):
        shards.hold_job(first, "j", MOVED, 2)
    with pytest.raises(ShardError) as absent:
        shards.hold_job(first, "nosuch", HOLD)
    assert absent.value.status == grpc.StatusCode.NOT_FOUND

    # Execute / Assert: InitJob of the moved id is allowed, and serves normally
    again = make_job(shards, first, "j", _values(2))
    assert torch.equal(again.pull("w1", None, 5.0).values, _values(2))


def test_a_request_of_an_older_generation_answers_layout_moved(
    shards: ShardClient, first: str
) -> None:
    # Prepare: a job at generation 3
    initial = _values(1)
    current = make_job(shards, first, "j", initial, layout_generation=3)
    base = current.pull("w1", None, 5.0)

    # Execute / Assert: 3, 0 (not checked) and 4 (a plan that kept this shard's range, moved
    # back while it was down) read; 1 and 2 (plans of ranges since moved) do not
    for fine in (0, 4):
        reader = view(shards, first, "j", N, layout_generation=fine)
        assert reader.pull("w1", None, 5.0).versions == [0]
    for stale in (1, 2):
        job = view(shards, first, "j", N, layout_generation=stale)
        with pytest.raises(LayoutMovedError) as pulled:
            job.pull("w1", None, 5.0)
        assert "at layout generation 3 here" in pulled.value.details
        pushed = job.push("w1", 1, {0: b"\0" * (4 * N)}, "none", base, 1, timeout=5.0)[0]
        assert isinstance(pushed, LayoutMovedError)
        with pytest.raises(LayoutMovedError):
            shards.hold_job(first, "j", HOLD, stale)
        with pytest.raises(LayoutMovedError):
            job.lookup(0, torch.tensor([0]), 4, timeout=5.0)

    # Assert: nothing was applied or held
    snapshot = current.pull("w1", None, 5.0)
    assert snapshot.versions == [0] and torch.equal(snapshot.values, initial)


def test_adopt_replaces_an_older_generation_and_refuses_the_rest(
    shards: ShardClient, first: str
) -> None:
    # Prepare: a member's pull held; the state exported, its values changed
    job = make_job(shards, first, "j", _values(1))
    shards.hold_job(first, "j", HOLD)
    held = PullInThread(job, "w1")
    wait_waiting(shards, first, "j", ["w1"])
    tensors, meta = state_from_bytes(shards.export_job(first, "j"))
    tensors["values"] = _values(5)
    meta["config"]["layout_generation"] = 1
    newer = state_to_bytes(tensors, meta)

    # Execute
    shards.adopt_job(first, "j", 1, newer)
    held.join()

    # Assert: the waiter heard "layout moved"; generation 1 reads the adopted values
    assert isinstance(held.error, LayoutMovedError), held.error
    adopted = view(shards, first, "j", N, layout_generation=1)
    assert torch.equal(adopted.pull("w1", None, 5.0).values, _values(5))

    # Execute / Assert: an equal or older generation, or a header that disagrees with the
    # state, is refused
    for generation, state in ((1, newer), (0, at_generation(newer, 0)), (2, newer)):
        with pytest.raises(ShardError) as refused:
            shards.adopt_job(first, "j", generation, state)
        assert refused.value.status == grpc.StatusCode.FAILED_PRECONDITION, refused.value

    # Execute / Assert: states that are not a state of this job: INVALID_ARGUMENT
    tensors["values"] = _values(6)
    meta["config"]["layout_generation"] = 2
    longer = {**meta, "config": {**meta["config"], "length": N + 1}}
    other = {**meta, "config": {**meta["config"], "job_id": "other"}}
    for bad in (
        b"garbage",
        newer[:-5],
        state_to_bytes(tensors, longer),
        state_to_bytes(tensors, other),
        state_to_bytes({"values": torch.zeros(N, dtype=torch.float64)}, meta),
    ):
        with pytest.raises(ShardError) as invalid:
            shards.adopt_job(first, "j", 2, bad)
        assert invalid.value.status == grpc.StatusCode.INVALID_ARGUMENT, invalid.value

    # Assert: the job is as adopted
    snapshot = adopted.pull("w1", None, 5.0)
    assert snapshot.versions == [0] and torch.equal(snapshot.values, _values(5))


def test_adopt_refuses_a_stream_shorter_than_announced(shards: ShardClient, first: str) -> None:
    # Prepare
    make_job(shards, first, "j", _values(1))
    shards.hold_job(first, "j", HOLD)
    state = at_generation(shards.export_job(first, "j"), 1)
    header = ps_pb2.AdoptJobHeader(job_id="j", layout_generation=1, state_bytes=len(state) + 1)
    chunks = [ps_pb2.AdoptJobChunk(header=header), ps_pb2.AdoptJobChunk(data=state)]

    # Execute
    with pytest.raises(grpc.RpcError) as failed:
        shards.stub(first).AdoptJob(iter(chunks), timeout=10.0)

    # Assert: refused, and the job is still held at generation 0
    assert isinstance(failed.value, grpc.Call)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert shards.hold_job(first, "j", HOLD).layout_generation == 0


def test_configs_from_before_layout_generations_load_at_zero() -> None:
    # Prepare
    config = JobConfig("j", 0, 4, "async", 0, OptimizerSpec("sgd", 0.1), layout_generation=3)
    written = config.to_json()
    older = {k: v for k, v in written.items() if k != "layout_generation"}

    # Execute / Assert
    assert JobConfig.from_json(written).layout_generation == 3
    assert JobConfig.from_json(older).layout_generation == 0


def test_moved_jobs_are_remembered_up_to_a_bound() -> None:
    # Prepare
    moved = MovedJobs(kept=2)

    # Execute
    for i, job_id in enumerate(("a", "b", "c")):
        moved.add(job_id, i + 1)

    # Assert: the oldest is forgotten (NOT_FOUND again), the others answer "layout moved"
    assert (moved.get("a"), moved.get("b"), moved.get("c")) == (None, 2, 3)
    with pytest.raises(LayoutMoved, match="moved to layout generation 3"):
        moved.check("c")


def test_a_member_is_between_two_steps_once_its_push_is_decided_or_before_any_pull(
    shards: ShardClient, first: str
) -> None:
    # Prepare
    job = make_job(shards, first, "j", _values(1))

    # Execute / Assert: idle (no pull yet), in a step (pulled), between steps again (pushed)
    assert list(shards.hold_job(first, "j", HOLD).waiting) == ["w1"]
    shards.hold_job(first, "j", RELEASE)
    base = job.pull("w1", None, 5.0)
    assert list(shards.hold_job(first, "j", HOLD).waiting) == []
    assert push(job, "w1", 1, _values(2), base) == 1
    assert list(shards.hold_job(first, "j", HOLD).waiting) == ["w1"]
