"""Registered shards in the store: the contract on every store, and what a restarted
coordinator (and one whose state dir an older coordinator made) reads back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pscluster.config import Settings
from pscluster.coordinator.memory_store import MemoryStore
from pscluster.coordinator.shard_directory import ShardDirectory, Slot
from pscluster.coordinator.sqlite_store import SqliteStore
from pscluster.coordinator.store import (
    COMPLETED,
    RUNNING,
    JobRecord,
    JobStore,
    MoveRecord,
    ShardRecord,
    ShardSlice,
)
from pscluster.errors import FailedPrecondition


def job(job_id: str, slices: list[ShardSlice]) -> JobRecord:
    return JobRecord(job_id, "n", b"spec", "async", 1, 2, 10, slices)


TWO = [ShardSlice("a:1", 0, 5, "ps-0"), ShardSlice("b:1", 5, 5, "ps-1")]


class TestShardStoreContract:
    def test_a_shard_saved_again_keeps_its_first_registration(self, store: JobStore) -> None:
        # Prepare
        store.save_shard(ShardRecord("ps-1", "b:1", 2.0))
        store.save_shard(ShardRecord("ps-0", "a:1", 1.0))
        # Execute: ps-0 moved
        store.save_shard(ShardRecord("ps-0", "c:1", 9.0))
        # Assert
        assert store.shards() == [ShardRecord("ps-0", "c:1", 1.0), ShardRecord("ps-1", "b:1", 2.0)]

    def test_slices_follow_a_moved_shard_in_active_jobs_only(self, store: JobStore) -> None:
        # Prepare: a pending, a running and a completed job on ps-0, one job not on it
        store.create_job(job("j-1", TWO))
        store.create_job(job("j-2", TWO))
        store.create_job(job("j-3", TWO))
        store.create_job(job("j-4", [ShardSlice("b:1", 0, 10, "ps-1")]))
        store.update_job("j-2", state=RUNNING)
        store.update_job("j-3", state=COMPLETED)
        # Execute
        moved = store.readdress_shard("ps-0", "c:1")
        # Assert
        assert moved == ["j-1", "j-2"]
        for job_id in ("j-1", "j-2"):
            got = store.get_job(job_id)
            assert got is not None and got.shards == [ShardSlice("c:1", 0, 5, "ps-0"), TWO[1]]
        done = store.get_job("j-3")
        assert done is not None and done.shards == TWO  # where it ran stays on record
        assert store.readdress_shard("ps-0", "c:1") == []  # already there


def test_sqlite_keeps_registered_shards_and_their_jobs_across_a_reopen(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "db.sqlite"
    first = SqliteStore(path)
    first.save_shard(ShardRecord("ps-0", "a:1", 1.0))
    first.create_job(job("j-1", TWO))
    first.close()
    # Execute
    second = SqliteStore(path)
    # Assert
    assert second.shards() == [ShardRecord("ps-0", "a:1", 1.0)]
    restored = second.get_job("j-1")
    assert restored is not None and restored.shards == TWO
    second.close()


def test_a_state_dir_of_an_older_coordinator_is_brought_up_to_date(tmp_path: Path) -> None:
    # Prepare: a database as a coordinator before shard registration left it: no table of
    # shards, and slices of three items
    path = tmp_path / "db.sqlite"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE registered_shards")
    first = SqliteStore(tmp_path / "other.sqlite")
    first.create_job(job("j-old", [ShardSlice("a:1", 0, 10)]))
    first.close()
    row = sqlite3.connect(tmp_path / "other.sqlite").execute("SELECT * FROM jobs").fetchone()
    db.execute(f"INSERT INTO jobs VALUES ({', '.join('?' * len(row))})", row)
    db.commit()
    db.close()
    assert json.loads(row[8]) == [["a:1", 0, 10]]  # the old format, as stored
    # Execute
    store = SqliteStore(path)
    # Assert
    old = store.get_job("j-old")
    assert old is not None and old.shards == [ShardSlice("a:1", 0, 10, "")]
    store.save_shard(ShardRecord("ps-0", "a:1", 1.0))
    assert store.shards() == [ShardRecord("ps-0", "a:1", 1.0)]
    store.close()


def test_a_restarted_coordinator_knows_its_shards_and_places_once_they_beat(
    tmp_path: Path,
) -> None:
    # Prepare: two shards register; a job is placed on them
    clock = [100.0]
    settings = Settings(state_dir=tmp_path, shard_timeout_seconds=10.0)
    store = SqliteStore(tmp_path / "db.sqlite")
    first = ShardDirectory(settings, store, lambda: clock[0], lambda: 7.0)
    first.register("ps-1", "b:1")
    first.register("ps-0", "a:1")
    slots = first.placement()
    store.create_job(job("j-1", [ShardSlice(s.address, 0, 5, s.shard_id) for s in slots]))
    store.close()
    # Execute: a new coordinator process on the same state
    store = SqliteStore(tmp_path / "db.sqlite")
    second = ShardDirectory(settings, store, lambda: clock[0], lambda: 8.0)
    listed = second.listing()
    # Assert: known with the job each holds, none live, so no job is placed yet
    assert slots == [Slot("ps-0", "a:1"), Slot("ps-1", "b:1")]
    rows = [(s.shard_id, s.address, s.live, s.last_seen_age, list(s.jobs)) for s in listed.shards]
    assert rows == [("ps-0", "a:1", False, -1.0, ["j-1"]), ("ps-1", "b:1", False, -1.0, ["j-1"])]
    with pytest.raises(FailedPrecondition, match=r"2 registered, none live.*PSC_COORDINATOR"):
        second.placement()
    second.register("ps-0", "a:1")
    assert second.placement() == [Slot("ps-0", "a:1")]
    store.close()


def test_a_static_list_places_on_it_and_ignores_registrations(tmp_path: Path) -> None:
    # Prepare
    settings = Settings(state_dir=tmp_path, shards="x:1,y:1")
    store = MemoryStore()
    directory = ShardDirectory(settings, store, lambda: 0.0, lambda: 0.0)
    # Execute
    directory.register("ps-0", "a:1")
    # Assert
    assert directory.placement() == [Slot("", "x:1"), Slot("", "y:1")]
    listed = directory.listing()
    assert listed.static_list and [s.address for s in listed.shards] == ["x:1", "y:1"]


def test_a_restarted_coordinator_keeps_off_the_shard_scaled_away(tmp_path: Path) -> None:
    # Prepare: three shards, scaled down to two; the third stays registered and live
    settings = Settings(state_dir=tmp_path, shard_timeout_seconds=10.0)
    store = SqliteStore(tmp_path / "db.sqlite")
    first = ShardDirectory(settings, store, lambda: 100.0, lambda: 7.0)
    for i in range(3):
        first.register(f"ps-{i}", f"h{i}:1")
    assert [s.shard_id for s in first.use(2)] == ["ps-0", "ps-1"]
    store.close()

    # Execute: a new coordinator process on the same state, every shard beating again
    store = SqliteStore(tmp_path / "db.sqlite")
    second = ShardDirectory(settings, store, lambda: 200.0, lambda: 8.0)
    for i in range(3):
        second.register(f"ps-{i}", f"h{i}:1")

    # Assert: new jobs still go to the two chosen, and growing again may take the third
    assert store.shards_in_use() == ["ps-0", "ps-1"]
    assert sorted(s.shard_id for s in second.placement()) == ["ps-0", "ps-1"]
    assert [s.shard_id for s in second.use(3)] == ["ps-0", "ps-1", "ps-2"]
    assert MemoryStore().shards_in_use() is None
    store.close()


def test_status_probes_the_shards_that_matter_not_one_drained_and_gone() -> None:
    # Prepare: ps-0 live; ps-1 left holding nothing (drained, then removed); ps-2 silent
    # past the timeout while holding a running job
    clock = [0.0]
    store = MemoryStore()
    settings = Settings(shard_timeout_seconds=10.0)
    directory = ShardDirectory(settings, store, lambda: clock[0], lambda: 1.0)
    for i in range(3):
        directory.register(f"ps-{i}", f"h{i}:1")
    store.create_job(job("j-1", [ShardSlice("h2:1", 0, 10, "ps-2")]))
    store.update_job("j-1", state=RUNNING)
    directory.register("ps-1", "h1:1", leaving=True)
    clock[0] = 5.0
    directory.register("ps-0", "h0:1")
    clock[0] = 12.0

    # Execute / Assert
    assert directory.addresses() == ["h0:1", "h2:1"]


def test_a_move_under_way_is_kept_until_it_ends_across_a_reopen(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "db.sqlite"
    first = SqliteStore(path)
    first.begin_move(MoveRecord("j-1", 2, TWO))
    first.begin_move(MoveRecord("j-1", 3, TWO[:1]))  # a later move of the same job
    first.begin_move(MoveRecord("j-2", 5, TWO))
    first.close()

    # Execute
    second = SqliteStore(path)
    kept = second.moves()
    second.end_move("j-1")
    second.end_move("j-9")  # none recorded: nothing happens

    # Assert
    assert kept == [MoveRecord("j-1", 3, TWO[:1]), MoveRecord("j-2", 5, TWO)]
    assert second.moves() == [MoveRecord("j-2", 5, TWO)]
    second.close()
    memory = MemoryStore()
    memory.begin_move(MoveRecord("j-1", 2, TWO))
    memory.end_move("j-1")
    assert memory.moves() == []
