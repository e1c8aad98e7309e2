"""The embedded default store: one SQLite file in WAL mode under the coordinator's state dir.

One connection guarded by a lock: the coordinator's writes are small and few (a job update
per lease, a row per step), so serialising them costs less than the bookkeeping of a
connection per thread, and it keeps multi-statement updates (step numbering) atomic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pscluster.coordinator.store import (
    EpochRecord,
    EventRecord,
    JobRecord,
    JobStore,
    LeaseRecord,
    ShardSlice,
    StepRecord,
    check_changes,
)
from pscluster.coordinator.writes import (
    BatchesDropped,
    EpochRecorded,
    EventAppended,
    LeaseDropped,
    LeaseSaved,
    ProgressSaved,
    StepsAppended,
    Write,
)
from pscluster.errors import AlreadyExists, NotFound

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
"""
# Columns added since the first schema, for state directories made by an older coordinator.
_ADDED_COLUMNS = {
    "epochs": {
        "metrics": "TEXT NOT NULL DEFAULT '{}'",
        "versions": "TEXT NOT NULL DEFAULT '[]'",
    },
}
_LEASE_FIELDS = [f.name for f in dataclasses.fields(LeaseRecord)]
CHECKPOINT_SECONDS = 1.0

_FIELDS = [f.name for f in dataclasses.fields(JobRecord)]
_JSON_FIELDS = {"done_partitions", "pending_evals", "shards"}
_FLOAT_FIELDS = {"test_accuracy", "last_loss"}


def _real(value: Any) -> float:
    # SQLite stores NaN as NULL; a diverged loss must read back as NaN, not fail.
    return math.nan if value is None else float(value)


def _encode(name: str, value: Any) -> Any:
    if name == "shards":
        return json.dumps([[s.address, s.start, s.length] for s in value])
    if name in _JSON_FIELDS:
        return json.dumps(sorted(int(v) for v in value))
    return value


def _decode_job(row: sqlite3.Row) -> JobRecord:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        raw = row[name]
        if name == "shards":
            values[name] = [ShardSlice(a, int(s), int(n)) for a, s, n in json.loads(raw)]
        elif name in _JSON_FIELDS:
            values[name] = [int(v) for v in json.loads(raw)]
        elif name in _FLOAT_FIELDS:
            values[name] = _real(raw)
        elif name in {"spec", "final_stats"}:
            values[name] = bytes(raw)
        else:
            values[name] = raw
    return JobRecord(**values)


class SqliteStore(JobStore):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, with explicit BEGIN where several statements must
        # land together.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._add_columns()
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if str(path) != ":memory:":
            # Commits never checkpoint the log themselves (a checkpoint inside a commit held
            # every waiting CompleteTask ~100 ms): a thread of its own does, in the background.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoints(self) -> None:
        """Move the write-ahead log into the database now and then, on a connection of its
        own (PASSIVE: it never blocks the writer)."""
        db = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            while not self._stop.wait(CHECKPOINT_SECONDS):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def _add_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Statements that land together or not at all, under the connection's lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def create_job(self, job: JobRecord) -> None:
        cols = ", ".join(_FIELDS)
        marks = ", ".join("?" for _ in _FIELDS)
        row = [_encode(n, getattr(job, n)) for n in _FIELDS]
        with self._lock:
            try:
                self._db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", row)
            except sqlite3.IntegrityError as e:
                raise AlreadyExists(f"job {job.job_id} already exists") from e

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _decode_job(row)

    def list_jobs(self, state: str | None = None) -> list[JobRecord]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY seq", (state,)
                ).fetchall()
        return [_decode_job(r) for r in rows]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        check_changes(changes)
        with self._lock:
            if changes:
                sets = ", ".join(f"{name} = ?" for name in changes)
                args = [_encode(n, v) for n, v in changes.items()]
                self._db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*args, job_id])
            return self._require(job_id)

    def append_steps(self, job_id: str, steps: Sequence[StepRecord]) -> JobRecord:
        with self._transaction():
            self._require(job_id)
            self._insert_steps(job_id, steps)
            return self._require(job_id)  # read inside the transaction: this write's result

    def _insert_steps(self, job_id: str, steps: Sequence[StepRecord]) -> None:
        """Number the steps after the job's last one (call inside a transaction)."""
        row = self._db.execute(
            "SELECT steps, samples FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None or not steps:
            return
        count, samples = int(row[0]), int(row[1])
        self._db.executemany(
            "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, count + i + 1, s.loss, s.samples, s.worker_id, s.epoch, s.unix_time)
                for i, s in enumerate(steps)
            ],
        )
        self._db.execute(
            "UPDATE jobs SET steps = ?, last_loss = ?, samples = ? WHERE job_id = ?",
            (count + len(steps), steps[-1].loss, samples + sum(s.samples for s in steps), job_id),
        )

    def steps(self, job_id: str, after: int = 0) -> list[StepRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT step, loss, samples, worker_id, epoch, unix_time FROM steps "
                "WHERE job_id = ? AND step > ? ORDER BY step",
                (job_id, after),
            ).fetchall()
        return [StepRecord(r[0], _real(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def steps_by_worker(self, job_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT worker_id, COUNT(*) FROM steps WHERE job_id = ? GROUP BY worker_id",
                (job_id,),
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def record_epoch(self, job_id: str, result: EpochRecord) -> JobRecord:
        with self._transaction():
            self._require(job_id)
            self._insert_epoch(job_id, result)
            return self._require(job_id)

    def _insert_epoch(self, job_id: str, result: EpochRecord) -> None:
        """Store an evaluation; the job's test_accuracy follows its latest epoch's."""
        self._db.execute(
            "INSERT OR REPLACE INTO epochs (job_id, epoch, test_accuracy, test_loss, "
            "unix_time, samples, metrics, versions) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                result.epoch,
                result.test_accuracy,
                result.test_loss,
                result.unix_time,
                result.samples,
                json.dumps(result.metrics),
                json.dumps(list(result.versions)),
            ),
        )
        latest = self._db.execute(
            "SELECT test_accuracy FROM epochs WHERE job_id = ? ORDER BY epoch DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        self._db.execute("UPDATE jobs SET test_accuracy = ? WHERE job_id = ?", (latest[0], job_id))

    def epochs(self, job_id: str) -> list[EpochRecord]:
        return self._epochs(job_id, "ORDER BY epoch")

    def latest_epoch(self, job_id: str) -> EpochRecord | None:
        found = self._epochs(job_id, "ORDER BY epoch DESC LIMIT 1")
        return found[0] if found else None

    def _epochs(self, job_id: str, order: str) -> list[EpochRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT epoch, test_accuracy, test_loss, unix_time, samples, metrics, versions "
                f"FROM epochs WHERE job_id = ? {order}",
                (job_id,),
            ).fetchall()
        return [
            EpochRecord(
                r[0],
                _real(r[1]),
                _real(r[2]),
                r[3],
                r[4],
                {k: _real(v) for k, v in json.loads(r[5]).items()},
                tuple(int(v) for v in json.loads(r[6])),
            )
            for r in rows
        ]

    def append_event(self, job_id: str, event: EventRecord) -> None:
        with self._transaction():
            self._require(job_id)
            self._db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (job_id, event.unix_time, event.kind, event.worker_id, event.message),
            )

    def events(self, job_id: str) -> list[EventRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT unix_time, kind, worker_id, message FROM events WHERE job_id = ? "
                "ORDER BY rowid",
                (job_id,),
            ).fetchall()
        return [EventRecord(r[0], r[1], r[2], r[3]) for r in rows]

    def add_dropped(self, job_id: str, batches: Mapping[str, int]) -> None:
        with self._transaction():
            self._require(job_id)
            self._insert_dropped(job_id, batches)

    def _insert_dropped(self, job_id: str, batches: Mapping[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO dropped VALUES (?, ?, ?) ON CONFLICT (job_id, reason) "
            "DO UPDATE SET batches = batches + excluded.batches",
            [(job_id, reason, int(n)) for reason, n in batches.items()],
        )

    def dropped(self, job_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, batches FROM dropped WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def save_leases(self, leases: Sequence[LeaseRecord]) -> None:
        rows = [[getattr(lease, n) for n in _LEASE_FIELDS] for lease in leases]
        marks = ", ".join("?" for _ in _LEASE_FIELDS)
        with self._transaction():
            self._db.execute("DELETE FROM leases")
            self._db.executemany(f"INSERT INTO leases VALUES ({marks})", rows)

    def apply(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        with self._transaction():
            for w in writes:
                self._apply_one(w)

    def _apply_one(self, w: Write) -> None:
        db = self._db
        if isinstance(w, LeaseSaved):
            row = [getattr(w.lease, n) for n in _LEASE_FIELDS]
            marks = ", ".join("?" for _ in _LEASE_FIELDS)
            db.execute(f"INSERT OR REPLACE INTO leases VALUES ({marks})", row)
        elif isinstance(w, LeaseDropped):
            db.execute("DELETE FROM leases WHERE lease_id = ?", (w.lease_id,))
        elif isinstance(w, ProgressSaved):
            db.execute(
                "UPDATE jobs SET epoch = ?, done_partitions = ?, pending_evals = ? "
                "WHERE job_id = ?",
                (
                    w.epoch,
                    _encode("done_partitions", w.done_partitions),
                    _encode("pending_evals", w.pending_evals),
                    w.job_id,
                ),
            )
        elif isinstance(w, EpochRecorded):
            self._insert_epoch(w.job_id, w.record)
        elif isinstance(w, StepsAppended):
            self._insert_steps(w.job_id, w.steps)
        elif isinstance(w, BatchesDropped):
            self._insert_dropped(w.job_id, w.batches)
        elif isinstance(w, EventAppended):
            e = w.event
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (w.job_id, e.unix_time, e.kind, e.worker_id, e.message),
            )
        else:
            check_changes(w.changes)
            if w.changes:
                sets = ", ".join(f"{name} = ?" for name in w.changes)
                args = [_encode(n, v) for n, v in w.changes.items()]
                db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*args, w.job_id])

    def leases(self) -> list[LeaseRecord]:
        cols = ", ".join(_LEASE_FIELDS)
        with self._lock:
            rows = self._db.execute(f"SELECT {cols} FROM leases ORDER BY rowid").fetchall()
        return [LeaseRecord(*r) for r in rows]

    def _require(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        return _decode_job(row)
