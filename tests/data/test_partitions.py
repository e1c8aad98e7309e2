"""The partition plan: a pure function of (n, partitions, partition, epoch, seed, block)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pscluster.data.partitions import batch_counts, batches, partition_indices, partition_rows

Plan = tuple[int, int, int, int, int]
plans = st.tuples(
    st.integers(1, 400),  # rows
    st.integers(1, 8),  # partitions
    st.integers(1, 50),  # batch size
    st.integers(0, 2**32),  # seed
    st.integers(1, 40),  # block
)


@given(plans, st.integers(0, 5))
def test_every_row_is_in_exactly_one_partition_once_an_epoch(plan: Plan, epoch: int) -> None:
    n, partitions, batch, seed, block = plan
    seen = np.concatenate(
        [
            np.concatenate(
                batches(n, partitions, p, epoch, batch, seed, block) or [np.zeros(0, int)]
            )
            for p in range(partitions)
        ]
    )
    assert sorted(seen.tolist()) == list(range(n))


@given(plans)
def test_the_counts_the_coordinator_uses_are_the_plans_the_workers_follow(plan: Plan) -> None:
    n, partitions, batch, seed, block = plan
    expected = [len(batches(n, partitions, p, 3, batch, seed, block)) for p in range(partitions)]
    assert batch_counts(n, partitions, batch, seed, block) == expected
    rows = [len(partition_indices(n, partitions, p, seed, block)) for p in range(partitions)]
    assert partition_rows(n, partitions, seed, block) == rows


def test_block_one_is_the_per_row_shuffle_of_uploaded_data() -> None:
    # The plan for uploaded arrays did not change when blocks came in: same seed, same batches.
    order = np.random.default_rng([7, 0]).permutation(100)
    assert partition_indices(100, 3, 1, 7).tolist() == order[34:67].tolist()
    assert [b.tolist() for b in batches(100, 3, 1, 2, 10, 7)] == [
        b.tolist() for b in batches(100, 3, 1, 2, 10, 7, block=1)
    ]


def test_with_blocks_a_batch_touches_at_most_two_blocks() -> None:
    for batch in batches(10_000, 4, 2, epoch=1, batch_size=64, seed=3, block=500):
        assert len(set((batch // 500).tolist())) <= 2


def test_a_re_leased_partition_gets_the_same_batches() -> None:
    first = batches(1000, 5, 3, 2, 32, 11, block=64)
    again = batches(1000, 5, 3, 2, 32, 11, block=64)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other_epoch = batches(1000, 5, 3, 3, 32, 11, block=64)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_epoch, strict=True))
