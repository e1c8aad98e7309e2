"""The statements each write record (:mod:`pscluster.coordinator.writes`) becomes in SQLite.

The store applies a batch of records in one transaction (the store writer's group commit);
the inserts that several records and the store's own methods share are here too. Every
function runs inside the caller's transaction, on its connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from pscluster.coordinator.sqlite_schema import LEASE_FIELDS, encode
from pscluster.coordinator.store import EpochRecord, EventRecord, StepRecord, check_changes
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


def apply_write(db: sqlite3.Connection, w: Write) -> None:
    if isinstance(w, LeaseSaved):
        row = [getattr(w.lease, n) for n in LEASE_FIELDS]
        marks = ", ".join("?" for _ in LEASE_FIELDS)
        db.execute(f"INSERT OR REPLACE INTO leases VALUES ({marks})", row)
    elif isinstance(w, LeaseDropped):
        db.execute("DELETE FROM leases WHERE lease_id = ?", (w.lease_id,))
    elif isinstance(w, ProgressSaved):
        db.execute(
            "UPDATE jobs SET epoch = ?, done_partitions = ?, pending_evals = ? WHERE job_id = ?",
            (
                w.epoch,
                encode("done_partitions", w.done_partitions),
                encode("pending_evals", w.pending_evals),
                w.job_id,
            ),
        )
    elif isinstance(w, EpochRecorded):
        insert_epoch(db, w.job_id, w.record)
    elif isinstance(w, StepsAppended):
        insert_steps(db, w.job_id, w.steps)
    elif isinstance(w, BatchesDropped):
        insert_dropped(db, w.job_id, w.batches)
    elif isinstance(w, EventAppended):
        insert_event(db, w.job_id, w.event)
    else:
        check_changes(w.changes)
        update_job(db, w.job_id, w.changes)


def update_job(db: sqlite3.Connection, job_id: str, changes: Mapping[str, Any]) -> None:
    """Set the job's fields (already checked by ``store.check_changes``)."""
    if changes:
        sets = ", ".join(f"{name} = ?" for name in changes)
        args = [encode(n, v) for n, v in changes.items()]
        db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*args, job_id])


def insert_steps(db: sqlite3.Connection, job_id: str, steps: Sequence[StepRecord]) -> None:
    """Number the steps after the job's last one."""
    row = db.execute("SELECT steps, samples FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None or not steps:
        return
    count, samples = int(row[0]), int(row[1])
    db.executemany(
        "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (job_id, count + i + 1, s.loss, s.samples, s.worker_id, s.epoch, s.unix_time)
            for i, s in enumerate(steps)
        ],
    )
    db.execute(
        "UPDATE jobs SET steps = ?, last_loss = ?, samples = ? WHERE job_id = ?",
        (count + len(steps), steps[-1].loss, samples + sum(s.samples for s in steps), job_id),
    )


def insert_epoch(db: sqlite3.Connection, job_id: str, result: EpochRecord) -> None:
    """Store an evaluation; the job's test_accuracy follows its latest epoch's."""
    db.execute(
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
    latest = db.execute(
        "SELECT test_accuracy FROM epochs WHERE job_id = ? ORDER BY epoch DESC LIMIT 1",
        (job_id,),
    ).fetchone()
    db.execute("UPDATE jobs SET test_accuracy = ? WHERE job_id = ?", (latest[0], job_id))


def insert_dropped(db: sqlite3.Connection, job_id: str, batches: Mapping[str, int]) -> None:
    """Add to the job's dropped batches, by reason."""
    db.executemany(
        "INSERT INTO dropped VALUES (?, ?, ?) ON CONFLICT (job_id, reason) "
        "DO UPDATE SET batches = batches + excluded.batches",
        [(job_id, reason, int(n)) for reason, n in batches.items()],
    )


def insert_event(db: sqlite3.Connection, job_id: str, event: EventRecord) -> None:
    db.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
        (job_id, event.unix_time, event.kind, event.worker_id, event.message),
    )
