"""Where a move between shards sends a job (pure: pscluster.coordinator.moves.plan_move and
with_generation; the RPCs are exercised on real processes in tests/e2e/test_scale_shards.py)."""

from __future__ import annotations

from pscluster.coordinator import store as st
from pscluster.coordinator.moves import plan_move, with_generation
from pscluster.coordinator.shard_directory import Slot


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


def test_a_state_under_another_generation_keeps_everything_else() -> None:
    _, meta = with_generation(({}, {"version": 7, "config": {"job_id": "j"}}), 5)
    assert meta == {"version": 7, "config": {"job_id": "j", "layout_generation": 5}}
