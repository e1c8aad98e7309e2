"""IdIndex and Admission against plain dict models, and their size at a million ids."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.server.tables.admission import Admission
from pscluster.server.tables.index import IdIndex

# small ids repeat within and across batches; large ones exercise the whole int64 range
ID = st.one_of(st.integers(0, 60), st.integers(0, 2**63 - 1))
BATCH = st.lists(ID, max_size=80)
OPS = st.lists(st.tuples(st.sampled_from(["insert", "find", "remove"]), BATCH), max_size=25)


class DictModel:
    """What IdIndex promises, one id at a time."""

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}
        self.free: list[int] = []
        self.next_slot = 0

    def insert(self, ids: list[int]) -> list[int]:
        for i in ids:
            if i not in self.slots:
                if self.free:
                    self.slots[i] = self.free.pop(0)
                else:
                    self.slots[i] = self.next_slot
                    self.next_slot += 1
        return [self.slots[i] for i in ids]

    def find(self, ids: list[int]) -> list[int]:
        return [self.slots.get(i, -1) for i in ids]

    def remove(self, ids: list[int]) -> list[int]:
        freed = sorted(self.slots.pop(i) for i in set(ids) if i in self.slots)
        self.free = sorted(self.free + freed)
        return freed


def apply(index: IdIndex, model: DictModel, ops: list[tuple[str, list[int]]]) -> None:
    for op, ids in ops:
        got = getattr(index, op)(np.array(ids, dtype=np.int64))
        assert got.dtype == np.int64
        assert got.tolist() == getattr(model, op)(ids), op


def assert_same(index: IdIndex, model: DictModel) -> None:
    ids, slots = index.items()
    assert sorted(model.slots.items(), key=lambda kv: kv[1]) == list(
        zip(ids.tolist(), slots.tolist(), strict=True)
    )
    assert len(index) == len(model.slots)
    assert index.slots_in_use == model.next_slot


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_index_matches_a_dict_through_inserts_finds_and_removes(
    ops: list[tuple[str, list[int]]],
) -> None:
    # Prepare: 16 positions, so batches of up to 80 ids collide and force growth
    index, model = IdIndex(8), DictModel()

    # Execute
    apply(index, model, ops)

    # Assert
    assert_same(index, model)
    everything = list(model.slots) + list(range(70))
    assert index.find(np.array(everything, dtype=np.int64)).tolist() == model.find(everything)


@settings(max_examples=60, deadline=None)
@given(OPS, OPS)
def test_a_restored_index_behaves_as_the_original(
    before: list[tuple[str, list[int]]], after: list[tuple[str, list[int]]]
) -> None:
    # Prepare
    index, model = IdIndex(8), DictModel()
    apply(index, model, before)

    # Execute
    restored = IdIndex.from_state(index.state())

    # Assert: the same answers now and after the same further batches (free list included)
    assert_same(restored, model)
    apply(restored, model, after)
    assert_same(restored, model)


def test_ids_with_one_home_position_all_land_in_one_batch() -> None:
    # Prepare: 30 ids with one home position in a table that holds 30 ids without growing
    index = IdIndex(30)
    candidates = np.arange(3_000_000, dtype=np.int64)
    home = index._home(candidates)
    ids = candidates[home == home[0]][:30]
    assert ids.size == 30
    positions = index.positions

    # Execute
    slots = index.insert(ids[::-1])

    # Assert
    assert index.positions == positions  # no rehash spread them out
    assert slots.tolist() == list(range(30))
    assert index.find(ids).tolist() == list(range(29, -1, -1))
    assert index.remove(ids[:10]).tolist() == list(range(20, 30))
    assert index.find(ids[10:]).tolist() == list(range(19, -1, -1))  # probes pass tombstones
    assert index.insert(np.array([5, 6], dtype=np.int64)).tolist() == [20, 21]


def test_churn_reuses_slots_and_does_not_grow_the_table() -> None:
    # Prepare
    index = IdIndex(8)
    index.insert(np.arange(1000, dtype=np.int64))
    size = index.nbytes()

    # Execute: remove half, insert as many new ids, 40 times (tombstones pile up, get purged)
    for round_ in range(40):
        gone = np.arange(round_ * 500, round_ * 500 + 500, dtype=np.int64)
        freed = index.remove(gone)
        new = np.arange(1000 + round_ * 500, 1500 + round_ * 500, dtype=np.int64)
        assert index.insert(new).tolist() == freed.tolist()

    # Assert
    assert len(index) == 1000 and index.slots_in_use == 1000
    assert index.nbytes() <= size + 4 * 1000  # the same table; at most a full free list
    live = np.arange(20_000, 21_000, dtype=np.int64)
    assert sorted(index.find(live).tolist()) == list(range(1000))


def test_a_million_ids_take_under_16_bytes_each() -> None:
    # Prepare: distinct ids spread over a wide range, and as many absent ones
    rng = np.random.default_rng(7)
    ids = (rng.permutation(1_000_000).astype(np.int64) * 2 + 1) * 1_000_003
    index = IdIndex()

    # Execute
    slots = index.insert(ids)
    found = index.find(ids)

    # Assert
    assert np.array_equal(slots, np.arange(1_000_000))
    assert np.array_equal(found, slots)
    assert (index.find(ids + 1_000_003) == -1).all()
    assert index.nbytes() / len(index) < 16  # 8 for the id, 4 / load for its position


@pytest.mark.parametrize(
    "ids",
    [np.array([1, -1]), np.array([[1, 2]]), np.array([1.0, 2.0]), np.array([2**63], np.uint64)],
)
def test_bad_ids_are_refused_with_a_reason(ids: np.ndarray) -> None:
    index = IdIndex()
    for call in (index.insert, index.find, index.remove):
        with pytest.raises(ValueError, match="ids must be"):
            call(ids)


def test_empty_batches_and_a_bad_capacity() -> None:
    index = IdIndex(1)
    assert index.insert(np.array([])).tolist() == [] and index.find([]).tolist() == []
    assert index.remove([]).tolist() == [] and len(index) == 0
    with pytest.raises(ValueError, match="initial_capacity"):
        IdIndex(0)


def test_a_state_whose_slots_do_not_add_up_is_refused() -> None:
    # Prepare
    index = IdIndex()
    index.insert(np.array([4, 5, 6], dtype=np.int64))
    index.remove(np.array([5], dtype=np.int64))
    state = index.state()

    # Execute / Assert
    with pytest.raises(ValueError, match="lacks"):
        IdIndex.from_state({k: v for k, v in state.items() if k != "free"})
    with pytest.raises(ValueError, match="not exactly"):
        IdIndex.from_state({**state, "free": np.array([], np.int64)})
    with pytest.raises(ValueError, match="distinct"):
        IdIndex.from_state({**state, "ids": np.array([4, 4], np.int64)})


def test_admission_counts_until_min_count_then_forgets() -> None:
    # Prepare
    admission = Admission(3)

    # Execute / Assert
    assert admission.observe(np.array([1, 2, 3])).tolist() == [False] * 3
    assert admission.observe(np.array([2, 3, 4])).tolist() == [False] * 3
    assert admission.observe(np.array([5, 4, 3])).tolist() == [False, False, True]
    assert admission.pending() == 4  # 1, 2, 4 and 5
    assert admission.observe(np.array([2, 4])).tolist() == [True, True]
    assert admission.pending() == 2
    assert admission.observe(np.array([3])).tolist() == [False]  # counted afresh


def test_admission_at_one_admits_everything_and_keeps_nothing() -> None:
    admission = Admission(1)
    assert admission.observe(np.array([9, 8])).all() and admission.pending() == 0
    assert Admission.from_state(0, {"ids": np.array([3]), "counts": np.array([1])}).pending() == 0


def test_admission_refuses_repeated_ids_in_a_batch() -> None:
    with pytest.raises(ValueError, match="once per batch"):
        Admission(2).observe(np.array([1, 2, 1]))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.lists(st.sets(st.integers(0, 40), max_size=30), max_size=20))
def test_admission_matches_a_counter(min_count: int, batches: list[set[int]]) -> None:
    # Prepare
    admission, seen = Admission(min_count), Counter[int]()

    for batch in batches:
        ids = list(batch)
        # Execute
        got = admission.observe(np.array(ids, dtype=np.int64))
        # Assert
        seen.update(ids)
        want = [seen[i] >= min_count for i in ids]
        assert got.tolist() == want
        for i, admitted in zip(ids, want, strict=True):
            if admitted:
                del seen[i]
        assert admission.pending() == len(seen)
        restored = Admission.from_state(min_count, admission.state())
        state = restored.state()
        assert dict(zip(state["ids"].tolist(), state["counts"].tolist(), strict=True)) == seen
        admission = restored


def test_admission_memory_stays_with_the_ids_pending() -> None:
    # Prepare: batch b is ids [1000 b, 1000 b + 2000): half seen before, so admitted now
    admission = Admission(2)
    sizes = []

    # Execute
    for b in range(100):
        admission.observe(np.arange(b * 1000, b * 1000 + 2000, dtype=np.int64))
        sizes.append(admission.nbytes())

    # Assert: held are ids 0-999 (never seen again) and the last batch's new half, in space
    # that admitted ids free for the next batch
    assert admission.pending() == 2000
    assert sizes[-1] == sizes[2] < 40 * 3000  # 3000: pending during a batch, before admission
