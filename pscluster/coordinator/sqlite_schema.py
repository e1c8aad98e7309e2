"""The SQLite store's tables, how a state directory made by an older coordinator is brought
up to date, and how records map to rows.

Kept apart from the store's queries so that a schema change (a column added, an index) is one
place: the table, its entry in the added columns, and the record's mapping here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from typing import Any

from pscluster.coordinator.store import JobRecord, LeaseRecord, ShardSlice

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL, spec BLOB NOT NULL, mode TEXT NOT NULL,
    epochs INTEGER NOT NULL, partitions INTEGER NOT NULL, num_params INTEGER NOT NULL,
    shards TEXT NOT NULL, state TEXT NOT NULL,
    created_unix REAL NOT NULL, started_unix REAL NOT NULL, finished_unix REAL NOT NULL,
    error TEXT NOT NULL, status_message TEXT NOT NULL,
    epoch INTEGER NOT NULL, done_partitions TEXT NOT NULL, pending_evals TEXT NOT NULL,
    test_accuracy REAL, last_loss REAL, steps INTEGER NOT NULL, samples INTEGER NOT NULL,
    generation INTEGER NOT NULL, final_stats BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS steps (
    job_id TEXT NOT NULL, step INTEGER NOT NULL, loss REAL, samples INTEGER NOT NULL,
    worker_id TEXT NOT NULL, epoch INTEGER NOT NULL, unix_time REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS epochs (
    job_id TEXT NOT NULL, epoch INTEGER NOT NULL, test_accuracy REAL, test_loss REAL,
    unix_time REAL NOT NULL, samples INTEGER NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', versions TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (job_id, epoch)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, unix_time REAL NOT NULL, kind TEXT NOT NULL,
    worker_id TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id);
CREATE TABLE IF NOT EXISTS dropped (
    job_id TEXT NOT NULL, reason TEXT NOT NULL, batches INTEGER NOT NULL,
    PRIMARY KEY (job_id, reason)
);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, worker_id TEXT NOT NULL,
    kind TEXT NOT NULL, epoch INTEGER NOT NULL, partition INTEGER NOT NULL,
    partitions INTEGER NOT NULL, first_batch INTEGER NOT NULL, end_batch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS registered_shards (
    shard_id TEXT PRIMARY KEY, address TEXT NOT NULL, registered_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards_in_use (shard_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS moves (
    job_id TEXT PRIMARY KEY, layout_generation INTEGER NOT NULL, shards TEXT NOT NULL
);
"""
# Columns added since the first schema, for state directories made by an older coordinator.
_ADDED_COLUMNS = {
    "jobs": {
        "data_shape": "BLOB NOT NULL DEFAULT x''",
        "layout_generation": "INTEGER NOT NULL DEFAULT 0",
    },
    "epochs": {
        "metrics": "TEXT NOT NULL DEFAULT '{}'",
        "versions": "TEXT NOT NULL DEFAULT '[]'",
    },
}

JOB_FIELDS = [f.name for f in dataclasses.fields(JobRecord)]
LEASE_FIELDS = [f.name for f in dataclasses.fields(LeaseRecord)]
_JSON_FIELDS = {"done_partitions", "pending_evals", "shards"}
_FLOAT_FIELDS = {"test_accuracy", "last_loss"}


def create_schema(db: sqlite3.Connection) -> None:
    """Every table, and every column added since the first schema (call under the lock)."""
    db.executescript(_SCHEMA)
    for table, columns in _ADDED_COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def real(value: Any) -> float:
    # SQLite stores NaN as NULL; a diverged loss must read back as NaN, not fail.
    return math.nan if value is None else float(value)


def encode(name: str, value: Any) -> Any:
    """A job field's value as its column holds it."""
    if name == "shards":
        # [address, start, length], plus the shard's id when it registered: a job stored by
        # an older coordinator (three items) reads back with no id, as one placed by a list.
        return json.dumps(
            [[s.address, s.start, s.length, *([s.shard_id] if s.shard_id else [])] for s in value]
        )
    if name in _JSON_FIELDS:
        return json.dumps(sorted(int(v) for v in value))
    return value


def decode_shards(raw: str) -> list[ShardSlice]:
    """A ``shards`` column: [address, start, length] and the shard's id when it has one."""
    return [ShardSlice(a, int(s), int(n), *rest) for a, s, n, *rest in json.loads(raw)]


def decode_job(row: sqlite3.Row) -> JobRecord:
    values: dict[str, Any] = {}
    for name in JOB_FIELDS:
        raw = row[name]
        if name == "shards":
            values[name] = decode_shards(raw)
        elif name in _JSON_FIELDS:
            values[name] = [int(v) for v in json.loads(raw)]
        elif name in _FLOAT_FIELDS:
            values[name] = real(raw)
        elif name in {"spec", "final_stats", "data_shape"}:
            values[name] = bytes(raw)
        else:
            values[name] = raw
    return JobRecord(**values)
