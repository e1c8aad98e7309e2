"""The embedded default store: one SQLite file in WAL mode under the coordinator's state dir.

One connection guarded by a lock: the coordinator's writes are small and few (a job update
per lease, a row per step), so serialising them costs less than the bookkeeping of a
connection per thread, and it keeps multi-statement updates (step numbering) atomic.

The tables and how records map to rows are :mod:`~pscluster.coordinator.sqlite_schema`, the
statements each write record becomes :mod:`~pscluster.coordinator.sqlite_writes`, and the
thread that checkpoints the log :mod:`~pscluster.coordinator.sqlite_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pscluster.coordinator.sqlite_checkpoint import WalCheckpointer
from pscluster.coordinator.sqlite_schema import (
    JOB_FIELDS,
    LEASE_FIELDS,
    create_schema,
    decode_job,
    encode,
    real,
)
from pscluster.coordinator.sqlite_shards import ShardTables
from pscluster.coordinator.sqlite_writes import (
    apply_write,
    insert_dropped,
    insert_epoch,
    insert_event,
    insert_steps,
    update_job,
)
from pscluster.coordinator.store import (
    EpochRecord,
    EventRecord,
    JobRecord,
    JobStore,
    LeaseRecord,
    StepRecord,
    check_changes,
)
from pscluster.coordinator.writes import Write
from pscluster.errors import AlreadyExists, NotFound


class SqliteStore(ShardTables, JobStore):
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
            create_schema(self._db)
        self._checkpointer: WalCheckpointer | None = None
        if str(path) != ":memory:":
            # Commits never checkpoint the log themselves (a checkpoint inside a commit held
            # every waiting CompleteTask ~100 ms): a thread of its own does, in the background.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = WalCheckpointer(self.path)
            self._checkpointer.start()

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
        if self._checkpointer is not None:
            self._checkpointer.stop(timeout=10)
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def create_job(self, job: JobRecord) -> None:
        cols = ", ".join(JOB_FIELDS)
        marks = ", ".join("?" for _ in JOB_FIELDS)
        row = [encode(n, getattr(job, n)) for n in JOB_FIELDS]
        with self._lock:
            try:
                self._db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", row)
            except sqlite3.IntegrityError as e:
                raise AlreadyExists(f"job {job.job_id} already exists") from e

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else decode_job(row)

    def list_jobs(self, state: str | None = None) -> list[JobRecord]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY seq", (state,)
                ).fetchall()
        return [decode_job(r) for r in rows]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        check_changes(changes)
        with self._lock:
            update_job(self._db, job_id, changes)
            return self._require(job_id)

    def append_steps(self, job_id: str, steps: Sequence[StepRecord]) -> JobRecord:
        with self._transaction():
            self._require(job_id)
            insert_steps(self._db, job_id, steps)
            return self._require(job_id)  # read inside the transaction: this write's result

    def steps(self, job_id: str, after: int = 0) -> list[StepRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT step, loss, samples, worker_id, epoch, unix_time FROM steps "
                "WHERE job_id = ? AND step > ? ORDER BY step",
                (job_id, after),
            ).fetchall()
        return [StepRecord(r[0], real(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

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
            insert_epoch(self._db, job_id, result)
            return self._require(job_id)

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
                real(r[1]),
                real(r[2]),
                r[3],
                r[4],
                {k: real(v) for k, v in json.loads(r[5]).items()},
                tuple(int(v) for v in json.loads(r[6])),
            )
            for r in rows
        ]

    def append_event(self, job_id: str, event: EventRecord) -> None:
        with self._transaction():
            self._require(job_id)
            insert_event(self._db, job_id, event)

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
            insert_dropped(self._db, job_id, batches)

    def dropped(self, job_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, batches FROM dropped WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def save_leases(self, leases: Sequence[LeaseRecord]) -> None:
        rows = [[getattr(lease, n) for n in LEASE_FIELDS] for lease in leases]
        marks = ", ".join("?" for _ in LEASE_FIELDS)
        with self._transaction():
            self._db.execute("DELETE FROM leases")
            self._db.executemany(f"INSERT INTO leases VALUES ({marks})", rows)

    def apply(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        with self._transaction():
            for w in writes:
                apply_write(self._db, w)

    def leases(self) -> list[LeaseRecord]:
        cols = ", ".join(LEASE_FIELDS)
        with self._lock:
            rows = self._db.execute(f"SELECT {cols} FROM leases ORDER BY rowid").fetchall()
        return [LeaseRecord(*r) for r in rows]

    def _require(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        return decode_job(row)
