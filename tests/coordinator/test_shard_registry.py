"""The shard registry's decisions, without sockets or a store: who may register, who is live,
and where a new job goes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from pscluster.coordinator.shard_registry import ShardEntry, ShardRegistry, choose, place
from pscluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument

TIMEOUT = 10.0


def test_a_first_registration_is_new_and_live() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    # Execute
    reg = registry.register("ps-0", "ps-0.ps:50061", now=100.0, wall=5.0)
    # Assert
    assert reg.changed and reg.previous_address == ""
    assert reg.entry == ShardEntry("ps-0", "ps-0.ps:50061", 5.0, 100.0)
    assert [e.shard_id for e in registry.live(100.0)] == ["ps-0"]


def test_a_heartbeat_renews_liveness_without_a_change_to_store() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "h:1", now=100.0, wall=5.0)
    # Execute
    reg = registry.register("ps-0", "h:1", now=108.0, wall=13.0)
    # Assert: still first registered at 5.0, and live for a timeout after the beat
    assert not reg.changed
    assert reg.entry.registered_unix == 5.0
    assert registry.live(108.0 + TIMEOUT) and not registry.live(108.0 + TIMEOUT + 0.1)


def test_liveness_expires_after_the_timeout() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "h:1", now=0.0, wall=0.0)
    registry.register("ps-1", "h:2", now=5.0, wall=0.0)
    # Execute
    live = registry.live(12.0)
    # Assert: ps-0 was last heard 12 s ago, ps-1 7 s ago; both stay known
    assert [e.shard_id for e in live] == ["ps-1"]
    assert [e.shard_id for e in registry.entries()] == ["ps-0", "ps-1"]


def test_the_same_id_at_a_new_address_is_the_same_shard_moved() -> None:
    # Prepare: ps-0 went silent (its pod was rescheduled) past the timeout
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "10.0.0.5:50061", now=0.0, wall=1.0)
    # Execute
    reg = registry.register("ps-0", "10.0.0.9:50061", now=11.0, wall=12.0)
    # Assert
    assert reg.changed and reg.previous_address == "10.0.0.5:50061"
    assert reg.entry == ShardEntry("ps-0", "10.0.0.9:50061", 1.0, 11.0)


def test_an_id_live_at_another_address_is_refused_until_it_expires() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "a:1", now=0.0, wall=0.0)
    # Execute / Assert: a second process claiming ps-0 while the first still beats
    with pytest.raises(AlreadyExists, match=r"'ps-0' is live at a:1.*PSC_SHARD_ID"):
        registry.register("ps-0", "b:1", now=5.0, wall=5.0)
    assert registry.entries()[0].address == "a:1"  # the refusal changed nothing
    # ... and taken once the first is silent for longer than the timeout
    assert registry.register("ps-0", "b:1", now=10.5, wall=10.5).previous_address == "a:1"


def test_a_leaving_shard_frees_its_id_at_once() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "a:1", now=0.0, wall=0.0)
    # Execute
    registry.register("ps-0", "a:1", now=1.0, wall=1.0, leaving=True)
    # Assert: not live, and its successor at a new address is accepted right away
    assert registry.live(1.0) == []
    assert registry.register("ps-0", "b:1", now=1.5, wall=1.5).previous_address == "a:1"


def test_a_leave_from_an_address_the_id_is_not_at_is_ignored() -> None:
    # Prepare: the old process of ps-0 stops after its successor took the id over
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "b:1", now=0.0, wall=0.0)
    # Execute
    registry.register("ps-0", "a:1", now=1.0, wall=1.0, leaving=True)
    registry.register("ps-9", "c:1", now=1.0, wall=1.0, leaving=True)  # never registered
    # Assert
    assert [(e.shard_id, e.address) for e in registry.live(1.0)] == [("ps-0", "b:1")]


def test_two_ids_at_one_live_address_are_refused() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    registry.register("ps-0", "a:1", now=0.0, wall=0.0)
    # Execute / Assert
    with pytest.raises(AlreadyExists, match="a:1 is live as shard 'ps-0'"):
        registry.register("ps-1", "a:1", now=1.0, wall=1.0)


@pytest.mark.parametrize(
    ("shard_id", "address"),
    [("", "a:1"), ("-x", "a:1"), ("a b", "a:1"), ("x" * 64, "a:1"), ("ps-0", "a"),
     ("ps-0", "a:99999"), ("ps-0", "a b:1")],
)  # fmt: skip
def test_malformed_ids_and_addresses_are_refused(shard_id: str, address: str) -> None:
    with pytest.raises(InvalidArgument):
        ShardRegistry(TIMEOUT).register(shard_id, address, now=0.0, wall=0.0)


def test_shards_known_from_the_store_are_not_live_until_they_register() -> None:
    # Prepare: what a restarted coordinator reads back
    known = [ShardEntry("ps-0", "a:1", 1.0, 50.0), ShardEntry("ps-1", "b:1", 2.0)]
    # Execute
    registry = ShardRegistry(TIMEOUT, known)
    # Assert: known, none live; a shard at a new address is not refused (its old one is dead)
    assert [e.shard_id for e in registry.entries()] == ["ps-0", "ps-1"]
    assert registry.live(50.0) == []
    assert registry.register("ps-0", "c:1", now=51.0, wall=60.0).previous_address == "a:1"
    assert [e.shard_id for e in registry.live(51.0)] == ["ps-0"]


def test_placement_takes_the_least_loaded_live_shards_first() -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    for i, now in enumerate((0.0, 9.0, 9.0, 9.0)):
        registry.register(f"ps-{i}", f"h:{i + 1}", now=now, wall=0.0)
    held = {"ps-1": 2, "ps-2": 0, "ps-3": 1, "ps-0": 0}
    # Execute
    placed = place(registry.live(15.0), held)
    # Assert: ps-0 is not live; the rest by jobs held
    assert [e.shard_id for e in placed] == ["ps-2", "ps-3", "ps-1"]


@given(
    hs.dictionaries(
        hs.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True),
        hs.tuples(hs.floats(0, 100), hs.integers(0, 5)),
        max_size=8,
    ),
    hs.floats(0, 120),
)
def test_placement_is_every_live_shard_once_ordered_by_load(
    shards: dict[str, tuple[float, int]], now: float
) -> None:
    # Prepare
    registry = ShardRegistry(TIMEOUT)
    for i, (sid, (seen, _)) in enumerate(sorted(shards.items())):
        registry.register(sid, f"h:{i + 1}", now=seen, wall=0.0)
    held = {sid: jobs for sid, (_, jobs) in shards.items()}
    # Execute
    placed = place(registry.live(now), held)
    # Assert
    live = {sid for sid, (seen, _) in shards.items() if now - seen <= TIMEOUT}
    assert sorted(e.shard_id for e in placed) == sorted(live)
    loads = [held[e.shard_id] for e in placed]
    assert loads == sorted(loads)


def _entries(*ids: str) -> list[ShardEntry]:
    return [
        ShardEntry(sid, f"h{i}:1", registered_unix=float(i), last_seen=0.0)
        for i, sid in enumerate(ids)
    ]


def test_scaling_up_keeps_the_shards_in_use_and_adds_the_longest_registered() -> None:
    # Prepare: "c" registered before "d"; "a" and "b" are in use
    live = _entries("c", "a", "b", "d")

    # Execute
    chosen = choose(live, 3, in_use={"a", "b"})

    # Assert: the two in use first (by registration), then the oldest newcomer
    assert [e.shard_id for e in chosen] == ["a", "b", "c"]


def test_scaling_down_gives_up_the_newest_shards_first() -> None:
    chosen = choose(_entries("a", "b", "c"), 2, in_use=None)
    assert [e.shard_id for e in chosen] == ["a", "b"]


def test_scaling_past_the_live_shards_or_below_one_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="only 2 registered shard"):
        choose(_entries("a", "b"), 3, in_use=None)
    with pytest.raises(InvalidArgument, match="at least one shard"):
        choose(_entries("a"), 0, in_use=None)


def test_scaling_down_gives_up_the_highest_numbered_replica_first() -> None:
    # Prepare: compose replicas, "pscluster-ps-10" registered first (restarted out of order),
    # and an id with no number, newest of all
    live = _entries("pscluster-ps-10", "pscluster-ps-2", "extra", "pscluster-ps-1")

    # Execute
    chosen = choose(live, 2, in_use=None)

    # Assert: kept by number, as `--scale ps=2` keeps ps-1 and ps-2
    assert [e.shard_id for e in chosen] == ["pscluster-ps-1", "pscluster-ps-2"]
    assert [e.shard_id for e in choose(live, 4, in_use=None)][-1] == "extra"
