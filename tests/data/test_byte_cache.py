"""The byte-bounded LRU cache (pscluster.data.byte_cache) that a parquet source's row groups
and a worker's leased partitions are kept in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.data.byte_cache import ByteLRU


def test_the_least_recently_used_goes_first() -> None:
    cache: ByteLRU[str, int] = ByteLRU(limit=30)
    cache.put("a", 1, 10)
    cache.put("b", 2, 10)
    cache.put("c", 3, 10)
    assert cache.get("a") == 1  # a is now the most recently used

    cache.put("d", 4, 10)

    assert cache.get("b") is None and [cache.get(k) for k in "acd"] == [1, 3, 4]
    assert cache.bytes == 30


def test_a_value_larger_than_the_whole_cache_is_not_kept_and_drops_nothing() -> None:
    cache: ByteLRU[str, int] = ByteLRU(limit=30)
    cache.put("a", 1, 20)

    cache.put("big", 2, 31)

    assert cache.get("big") is None and cache.get("a") == 1 and cache.bytes == 20


def test_a_key_put_again_is_counted_once() -> None:
    cache: ByteLRU[str, int] = ByteLRU(limit=30)
    cache.put("a", 1, 20)

    cache.put("a", 2, 25)

    assert cache.get("a") == 2 and cache.bytes == 25 and len(cache) == 1


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 100),
    puts=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 60)), max_size=40),
)
def test_it_never_holds_more_than_its_limit_and_counts_what_it_holds(
    limit: int, puts: list[tuple[int, int]]
) -> None:
    cache: ByteLRU[int, int] = ByteLRU(limit)
    sizes: dict[int, int] = {}
    for key, nbytes in puts:
        cache.put(key, key, nbytes)
        sizes[key] = nbytes
        held = [k for k in sizes if cache.get(k) is not None]
        assert cache.bytes == sum(sizes[k] for k in held) <= limit
        # the one just put is held unless it alone is over the limit
        assert (cache.get(key) is not None) is (nbytes <= limit)
