"""The per-job phase timeline the coordinator keeps from worker reports: bounded per worker,
nothing lost when old points are merged, bad reports refused before anything is kept."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pscluster.coordinator.timeline import Timelines, check_phases, phase_totals
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2


def report(batches: int, **seconds: float) -> co_pb2.LeaseProgress:
    return co_pb2.LeaseProgress(batches=batches, phase_seconds=seconds)


@given(
    reports=st.lists(
        st.tuples(st.integers(1, 50), st.floats(0, 5), st.floats(0, 5)), min_size=1, max_size=300
    ),
    max_points=st.integers(2, 20),
)
def test_merging_old_points_keeps_every_batch_and_second(
    reports: list[tuple[int, float, float]], max_points: int
) -> None:
    # Prepare
    timelines = Timelines(max_points=max_points)

    # Execute
    for n, (batches, pull, push) in enumerate(reports):
        timelines.record("j", "w", report(batches, pull=pull, push=push), unix_time=float(n))
    points = timelines.points("j")

    # Assert: bounded, in time order, the last report as it came, totals unchanged
    assert len(points) <= max_points
    assert [p.unix_time for p in points] == sorted(p.unix_time for p in points)
    assert points[-1].unix_time == len(reports) - 1
    batches, totals = phase_totals(points)
    assert batches == sum(r[0] for r in reports)
    assert math.isclose(totals["pull"], sum(r[1] for r in reports), abs_tol=1e-6)
    assert math.isclose(totals["push"], sum(r[2] for r in reports), abs_tol=1e-6)


def test_workers_and_jobs_are_kept_apart_and_forgotten() -> None:
    timelines = Timelines()
    timelines.record("a", "w1", report(2, pull=0.2), unix_time=2.0)
    timelines.record("a", "w2", report(3, pull=0.3), unix_time=1.0)
    timelines.record("b", "w1", report(1, pull=0.1), unix_time=3.0)
    timelines.record("b", "w1", report(0, pull=0.0), unix_time=4.0)  # no batch: not a point

    assert [(p.worker_id, p.batches) for p in timelines.points("a")] == [("w2", 3), ("w1", 2)]
    assert len(timelines.points("b")) == 1
    timelines.forget("a")
    assert timelines.points("a") == [] and len(timelines.points("b")) == 1


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        ({"pull": -1.0}, "expected seconds >= 0"),
        ({"pull": float("nan")}, "expected seconds >= 0"),
        ({"no way": 1.0}, "expected a short name"),
        ({f"p{i}": 0.0 for i in range(17)}, "at most 16"),
    ],
)
def test_a_bad_phase_report_is_refused(seconds: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_phases(report(1, **seconds))
