"""The SQLite store's tables about shards rather than jobs: the registered shards, the ones
ScaleShards chose, and the moves under way (a job's next layout, written before any shard
adopts it, so that a coordinator that stops mid-move can finish or undo it when it starts).

A mixin of :class:`~pscluster.coordinator.sqlite_store.SqliteStore`, apart because these
tables change with the cluster's shape, not with a job's progress.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from pscluster.coordinator.sqlite_schema import decode_job, decode_shards, encode
from pscluster.coordinator.store import PENDING, RUNNING, MoveRecord, ShardRecord, readdress


class ShardTables:
    """Needs the store's connection, its lock and its transactions."""

    _db: sqlite3.Connection
    _lock: threading.Lock
    _transaction: Callable[[], AbstractContextManager[None]]

    def save_shard(self, shard: ShardRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO registered_shards VALUES (?, ?, ?) ON CONFLICT (shard_id) "
                "DO UPDATE SET address = excluded.address",
                (shard.shard_id, shard.address, shard.registered_unix),
            )

    def shards(self) -> list[ShardRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT shard_id, address, registered_unix FROM registered_shards ORDER BY shard_id"
            ).fetchall()
        return [ShardRecord(r[0], r[1], r[2]) for r in rows]

    def save_shards_in_use(self, shard_ids: Sequence[str]) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM shards_in_use")
            self._db.executemany(
                "INSERT INTO shards_in_use VALUES (?)", [(sid,) for sid in shard_ids]
            )

    def shards_in_use(self) -> list[str] | None:
        with self._lock:
            rows = self._db.execute("SELECT shard_id FROM shards_in_use ORDER BY shard_id")
            ids = [r[0] for r in rows.fetchall()]
        return ids or None  # ScaleShards never chooses none

    def readdress_shard(self, shard_id: str, address: str) -> list[str]:
        moved = []
        with self._transaction():
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY seq", (PENDING, RUNNING)
            ).fetchall()
            for job in (decode_job(r) for r in rows):
                slices = [readdress(s, shard_id, address) for s in job.shards]
                if slices != job.shards:
                    self._db.execute(
                        "UPDATE jobs SET shards = ? WHERE job_id = ?",
                        (encode("shards", slices), job.job_id),
                    )
                    moved.append(job.job_id)
        return moved

    def begin_move(self, move: MoveRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO moves VALUES (?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                "layout_generation = excluded.layout_generation, shards = excluded.shards",
                (move.job_id, move.layout_generation, encode("shards", move.shards)),
            )

    def end_move(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM moves WHERE job_id = ?", (job_id,))

    def moves(self) -> list[MoveRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, layout_generation, shards FROM moves ORDER BY job_id"
            ).fetchall()
        return [MoveRecord(r[0], int(r[1]), decode_shards(r[2])) for r in rows]
