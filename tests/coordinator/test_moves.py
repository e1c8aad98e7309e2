"""Where a move between shards sends a job, and which pieces of its per-value tensors travel
between which shards (pure: pscluster.coordinator.moves.plan_move and
pscluster.coordinator.recut_moves; the RPCs are exercised on real processes in
tests/e2e/test_scale_shards.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from pscluster.coordinator import store as st
from pscluster.coordinator.move_plan import plan_move
from pscluster.coordinator.recut_moves import Piece, pieces, sent_values
from pscluster.coordinator.shard_directory import Slot
from pscluster.model.partition import BalancedRanges, Range


def _job(*ids: str, params: int = 10) -> st.JobRecord:
    cut = [params // len(ids) + (1 if i < params % len(ids) else 0) for i in range(len(ids))]
    starts = [sum(cut[:i]) for i in range(len(ids))]
    slices = [
        st.ShardSlice(f"{sid}:1", start, n, sid)
        for sid, start, n in zip(ids, starts, cut, strict=True)
    ]
    return st.JobRecord("j", "j", b"", "async", 1, 1, params, slices, layout_generation=3)


def test_a_job_on_the_chosen_shards_in_their_order_does_not_move() -> None:
    job = _job("a", "b")
    assert plan_move(job, [Slot("a", "a:1"), Slot("b", "b:1")]) is None


def test_a_move_cuts_the_whole_vector_over_the_new_shards_at_the_next_generation() -> None:
    # Prepare
    job = _job("a", "b")

    # Execute
    plan = plan_move(job, [Slot("a", "a:1"), Slot("b", "b:1"), Slot("c", "c:1")])

    # Assert: contiguous, covering every parameter once, in slot order
    assert plan is not None and plan.job is job
    new = plan.new
    assert [(s.shard_id, s.start, s.length) for s in new.shards] == [
        ("a", 0, 4),
        ("b", 4, 3),
        ("c", 7, 3),
    ]
    assert new.layout_generation == 4 and plan.new_addresses == ["a:1", "b:1", "c:1"]
    assert plan.old_addresses == ["a:1", "b:1"]


def test_growing_keeps_each_shards_overlap_and_sends_only_the_difference() -> None:
    # Prepare: 12 values on a, b; then on a, b, c (a: [0, 4), b: [4, 8), c: [8, 12))
    old, new = BalancedRanges().split(12, 2), BalancedRanges().split(12, 3)

    # Execute
    plan = pieces(old, new, ["a", "b"], ["a", "b", "c"])

    # Assert: a keeps [0, 4); b gets [4, 6) from a and keeps [6, 8); c gets [8, 12) from b
    assert plan == [
        [Piece(0, 4, 0, True)],
        [Piece(4, 2, 0, False), Piece(6, 2, 1, True)],
        [Piece(8, 4, 1, False)],
    ]
    assert sent_values(plan) == 6


def test_shrinking_sends_the_leaving_shards_ranges_to_their_new_owners() -> None:
    old, new = BalancedRanges().split(12, 3), BalancedRanges().split(12, 2)

    plan = pieces(old, new, ["a", "b", "c"], ["a", "b"])

    assert plan == [
        [Piece(0, 4, 0, True), Piece(4, 2, 1, False)],
        [Piece(6, 2, 1, True), Piece(8, 4, 2, False)],
    ]


def test_shards_in_another_order_keep_nothing_they_do_not_hold() -> None:
    # b takes the first range, which a held: nothing of it is local to b
    plan = pieces([Range(0, 5), Range(5, 5)], [Range(0, 5), Range(5, 5)], ["a", "b"], ["b", "a"])

    assert plan == [[Piece(0, 5, 0, False)], [Piece(5, 5, 1, False)]]
    assert sent_values(plan) == 10


def test_ranges_that_do_not_cover_the_same_offsets_are_refused() -> None:
    with pytest.raises(ValueError, match="cover"):
        pieces([Range(0, 5)], [Range(0, 6)], ["a"], ["a"])
    with pytest.raises(ValueError, match="addresses"):
        pieces([Range(0, 5)], [Range(0, 5)], ["a", "b"], ["a"])


@given(
    hs.integers(0, 10_000),
    hs.lists(hs.sampled_from("abcde"), min_size=1, max_size=5, unique=True),
    hs.lists(hs.sampled_from("abcdef"), min_size=1, max_size=6, unique=True),
)
def test_every_new_value_comes_from_the_one_old_shard_that_held_it(
    n: int, before: list[str], after: list[str]
) -> None:
    # Prepare
    old, new = BalancedRanges().split(n, len(before)), BalancedRanges().split(n, len(after))

    # Execute
    plan = pieces(old, new, before, after)

    # Assert: each new range is covered in order, each piece inside its source's old range,
    # local exactly where the source is the new shard itself; what stays plus what is sent
    # is every value once
    for target, address, mine in zip(new, after, plan, strict=True):
        at = target.start
        for piece in mine:
            source = old[piece.source]
            assert piece.start == at and piece.length > 0
            assert source.start <= piece.start and piece.start + piece.length <= source.end
            assert piece.local == (before[piece.source] == address)
            at += piece.length
        assert at == target.end
    kept = sum(p.length for mine in plan for p in mine if p.local)
    assert kept + sent_values(plan) == n
