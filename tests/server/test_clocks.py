"""MemberClocks on its own: exclusion of stragglers, re-entry, and a clock that never goes down."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.errors import InvalidArgument
from pscluster.server.clocks import MemberClocks, check_member_ids


def clocks_at(values: dict[str, int], excluded: tuple[str, ...] = ()) -> MemberClocks:
    """Members at the given clocks (reached by ticks), then ``excluded`` set."""
    clocks = MemberClocks()
    clocks.set_members(values)
    for worker, value in values.items():
        for _ in range(value):
            clocks.tick(worker)
    clocks.set_members(values, excluded)
    return clocks


def test_excluding_the_slowest_raises_the_clock_and_the_slowest_named() -> None:
    clocks = clocks_at({"a": 5, "b": 4, "slow": 1})
    assert clocks.clock == 1 and clocks.slowest() == ("slow", 1)

    clocks.set_members(["a", "b", "slow"], ["slow"])

    assert clocks.clock == 4 and clocks.slowest() == ("b", 4)
    assert clocks.excluded == ["slow"]
    assert clocks.snapshot() == {"a": 5, "b": 4, "slow": 1}  # its own clock is kept


def test_a_worker_asked_back_in_waits_until_it_has_caught_up() -> None:
    clocks = clocks_at({"a": 5, "b": 4, "slow": 1}, excluded=("slow",))

    clocks.set_members(["a", "b", "slow"], [])  # the coordinator takes it off the list

    assert clocks.excluded == ["slow"] and clocks.clock == 4  # not back to 1
    for _ in range(2):
        clocks.tick("slow")
    assert clocks.excluded == ["slow"] and clocks.clock == 4  # at 3: still behind
    clocks.tick("slow")
    assert clocks.excluded == [] and clocks.clock == 4  # at 4: counted again
    clocks.tick("b")
    assert clocks.clock == 4 and clocks.slowest() == ("slow", 4)  # and it paces the clock


def test_reading_raises_an_uncounted_worker_to_the_clock_and_lets_it_back_in() -> None:
    clocks = clocks_at({"a": 3, "slow": 0}, excluded=("slow",))
    clocks.read("a")  # a counted worker is never changed by a read
    assert clocks.snapshot() == {"a": 3, "slow": 0}

    clocks.read("slow")
    assert clocks.of("slow") == 3 and clocks.excluded == ["slow"]  # still excluded: asked so

    clocks.set_members(["a", "slow"], [])
    assert clocks.excluded == []  # already caught up: counted at once


def test_with_every_member_excluded_the_slowest_of_all_paces_but_never_lowers_it() -> None:
    clocks = clocks_at({"a": 6, "slow": 2}, excluded=("slow",))
    assert clocks.clock == 6

    clocks.set_members(["a", "slow"], ["a", "slow"])

    assert clocks.clock == 6 and clocks.excluded == ["a", "slow"]
    clocks.set_members(["slow"], ["slow"])  # a leaves too
    assert clocks.clock == 6


def test_members_joining_start_at_the_clock_excluded_or_not() -> None:
    clocks = clocks_at({"a": 5, "slow": 1}, excluded=("slow",))
    clocks.set_members(["a", "slow", "new", "late"], ["slow", "late"])
    assert clocks.snapshot() == {"a": 5, "slow": 1, "new": 5, "late": 5}
    assert clocks.excluded == ["late", "slow"] and clocks.clock == 5


def test_a_member_that_leaves_is_forgotten_with_its_exclusion() -> None:
    clocks = clocks_at({"a": 2, "slow": 0}, excluded=("slow",))
    clocks.set_members(["a"], [])
    clocks.set_members(["a", "slow"], [])
    assert clocks.excluded == [] and clocks.of("slow") == 2  # a newcomer again


@pytest.mark.parametrize(
    ("workers", "excluded", "message"),
    [
        (["a", ""], [], "empty id"),
        (["a", "a"], [], "worker_ids has duplicates"),
        (["a"], ["b"], r"excluded_worker_ids \['b'\] are not in worker_ids"),
        (["a", "b"], ["a", "a"], "excluded_worker_ids has duplicates"),
    ],
)
def test_member_ids_are_checked(workers: list[str], excluded: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_member_ids(workers, excluded)


_WORKERS = ["a", "b", "c", "d"]
_OPS = st.one_of(
    st.tuples(
        st.just("members"),
        st.sets(st.sampled_from(_WORKERS)),
        st.sets(st.sampled_from(_WORKERS)),
    ),
    st.tuples(st.just("tick"), st.sampled_from(_WORKERS), st.just(set[str]())),
    st.tuples(st.just("read"), st.sampled_from(_WORKERS), st.just(set[str]())),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_OPS, max_size=40))
def test_the_clock_never_goes_down_and_counted_members_are_never_behind_it(
    ops: list[tuple[str, object, set[str]]],
) -> None:
    clocks = MemberClocks()
    last = clocks.clock
    for op, arg, extra in ops:
        if op == "members":
            assert isinstance(arg, set)
            clocks.set_members(sorted(arg), sorted(extra & arg))
        elif arg in clocks:
            assert isinstance(arg, str)
            (clocks.tick if op == "tick" else clocks.read)(arg)
        assert clocks.clock >= last
        last = clocks.clock
        assert set(clocks.excluded) <= set(clocks.members)
        counted = set(clocks.members) - set(clocks.excluded)
        assert all(clocks.of(w) >= clocks.clock for w in counted)
        if counted:
            assert clocks.clock == min(clocks.of(w) for w in counted)
