"""A move that sends only what changes shard, on real shards over gRPC: a job on one shard is
split over two (the first keeps its half in place, the second reads the other half raw from
the first's copy, already retired by then), goes on exactly as the unmoved job, and is rolled
back by the first taking its retired copy back; SETTLED lets the copy go. A source that cannot
be read, or a segment neither kept nor read, changes nothing."""

from __future__ import annotations

import grpc
import pytest
import torch

from pscluster.server.durability import dense as dn
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.shard_client import JobShards, ShardClient, ShardError, ShardRange
from pscluster.transport import wire
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server import relayout
from tests.server.relayout import HOLD, RELEASE, assert_not_adopted, make_job, push, view

N, HALF = 3000, 1500
SETTLED = ps_pb2.HOLD_ACTION_SETTLED


def _values(seed: int) -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(seed))


# The shard settings, two shards served here and the shard client (tests/server/relayout.py).
settings_fixture = relayout.settings_fixture
first_fixture = relayout.first_fixture
second_fixture = relayout.second_fixture
shards_fixture = relayout.shards_fixture


def _half(skeleton: bytes, start: int) -> bytes:
    """The one-shard skeleton as one half's, at layout generation 1 (async: nothing else in
    it depends on the range)."""
    tensors, meta = state_from_bytes(skeleton)
    config = {**meta["config"], "start": start, "length": HALF, "layout_generation": 1}
    return state_to_bytes(tensors, {**meta, "config": config})


def _held_skeleton(shards: ShardClient, address: str) -> bytes:
    """Job "j" made on the shard at ``address``, held there: its skeleton."""
    make_job(shards, address, "j", _values(1))
    shards.hold_job(address, "j", HOLD)
    return shards.export_job(address, "j", skeleton=True)


def _segment(start: int, local: bool) -> ps_pb2.DenseSegment:
    return ps_pb2.DenseSegment(start=start, length=HALF, local=local)


def test_a_split_keeps_one_half_in_place_sends_the_other_and_rolls_back(
    shards: ShardClient, first: str, second: str
) -> None:
    # Prepare: the job and its never-moved twin, with the same pushes (momentum builds up)
    job = make_job(shards, first, "j", _values(1))
    twin = make_job(shards, first, "twin", _values(1))
    for seq in (1, 2):
        push(job, "w1", seq, _values(10 + seq), job.pull("w1", None, 5.0))
        push(twin, "w1", seq, _values(10 + seq), twin.pull("w1", None, 5.0))
    shards.hold_job(first, "j", HOLD)
    skeleton = shards.export_job(first, "j", skeleton=True)
    dtypes = dn.dense_dtypes(state_from_bytes(skeleton)[1])
    assert dtypes is not None and list(dtypes) == ["opt.momentum_buffer", "values"]

    # Execute: the first shard adopts its half first (its whole copy retired), then the
    # second gets the other half, read from that retired copy
    shards.adopt_job(first, "j", 1, _half(skeleton, 0), [_segment(0, True)])
    sourced = ps_pb2.DenseSegment(start=HALF, length=HALF, source=first)
    shards.adopt_job(second, "j", 1, _half(skeleton, HALF), [sourced], source_generation=0)

    # Assert: the two halves at generation 1 go on exactly as the unmoved job
    moved = JobShards(shards, "j", [ShardRange(first, 0, HALF), ShardRange(second, HALF, HALF)], 1)
    for address in (first, second):
        shards.hold_job(address, "j", RELEASE, 1)
    for seq in (3, 4):
        push_both(moved, seq)
        push(twin, "w1", seq, _values(10 + seq), twin.pull("w1", None, 5.0))
    assert torch.equal(moved.pull("w1", None, 5.0).values, twin.pull("w1", None, 5.0).values)

    # Execute / Assert: rolled back, the first shard has its whole copy again (as it was
    # when replaced, at version 2), at generation 2
    shards.restore_job(first, "j", 2)
    back = view(shards, first, "j", N, layout_generation=2)
    snapshot = back.pull("w1", None, 5.0)
    assert snapshot.versions == [2]

    # Assert: nothing retired is left to restore, before or after SETTLED
    shards.hold_job(first, "j", SETTLED, 2)
    with pytest.raises(ShardError) as none:
        shards.restore_job(first, "j", 3)
    assert none.value.status == grpc.StatusCode.FAILED_PRECONDITION


def test_local_pieces_need_a_copy_here_and_segments_must_cover_the_range(
    shards: ShardClient, first: str, second: str
) -> None:
    skeleton = _held_skeleton(shards, first)

    # A local piece on a shard without the job; segments that leave a gap
    gap = ps_pb2.DenseSegment(start=0, length=10, local=True)
    for address, start, segment, code in (
        (second, HALF, _segment(HALF, True), grpc.StatusCode.FAILED_PRECONDITION),
        (first, 0, gap, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(ShardError) as refused:
            shards.adopt_job(address, "j", 1, _half(skeleton, start), [segment])
        assert refused.value.status == code, refused.value

    # The job on the first shard is untouched, still held at generation 0
    assert shards.hold_job(first, "j", HOLD).layout_generation == 0


def push_both(job: JobShards, seq: int) -> None:
    """One push of gradient ``seq`` over both halves."""
    grad = _values(10 + seq)
    base = job.pull("w1", None, 5.0)
    parts = {0: wire.encode(grad[:HALF]), 1: wire.encode(grad[HALF:])}
    replies = job.push("w1", seq, parts, "none", base, 1, timeout=10.0)
    for reply in replies.values():
        assert isinstance(reply, ps_pb2.PushReply), reply
        assert reply.outcome == ps_pb2.PUSH_OUTCOME_APPLIED, reply


def test_a_source_that_cannot_be_read_or_is_also_local_or_missing_changes_nothing(
    shards: ShardClient, first: str, second: str
) -> None:
    skeleton = _held_skeleton(shards, first)
    down = "127.0.0.1:1"  # nothing listens there

    # A source that is down; one that holds the job at another generation; a segment that
    # is both kept here and read from elsewhere, and one that is neither
    for source, generation, local, code, says in (
        (down, 0, False, grpc.StatusCode.FAILED_PRECONDITION, f"from shard {down}"),
        (first, 7, False, grpc.StatusCode.FAILED_PRECONDITION, f"from shard {first}"),
        (first, 0, True, grpc.StatusCode.INVALID_ARGUMENT, "both kept here"),
        ("", 0, False, grpc.StatusCode.INVALID_ARGUMENT, "neither kept here"),
    ):
        segment = ps_pb2.DenseSegment(start=HALF, length=HALF, local=local, source=source)
        with pytest.raises(ShardError) as refused:
            shards.adopt_job(
                second, "j", 1, _half(skeleton, HALF), [segment], source_generation=generation
            )
        assert refused.value.status == code, refused.value
        assert says in str(refused.value)

    # Nothing changed: the second shard has no job "j", the first still holds it at 0
    assert_not_adopted(shards, second, first)
