"""A store that keeps everything in memory: for tests and throwaway local clusters.

It honours the same contract as the SQLite store (the shared test class runs against both),
so a coordinator built on it behaves the same until it is restarted.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pscluster.coordinator.store import (
    PENDING,
    RUNNING,
    EpochRecord,
    EventRecord,
    JobRecord,
    JobStore,
    LeaseRecord,
    MoveRecord,
    ShardRecord,
    StepRecord,
    check_changes,
    readdress,
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


def _lease_id(w: LeaseSaved | LeaseDropped) -> str:
    return w.lease.lease_id if isinstance(w, LeaseSaved) else w.lease_id


def _copy(job: JobRecord) -> JobRecord:
    # Callers get copies: a record mutated outside the store must not change what is stored.
    return dataclasses.replace(
        job,
        shards=list(job.shards),
        done_partitions=list(job.done_partitions),
        pending_evals=list(job.pending_evals),
    )


class MemoryStore(JobStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._steps: dict[str, list[StepRecord]] = {}
        self._epochs: dict[str, dict[int, EpochRecord]] = {}
        self._events: dict[str, list[EventRecord]] = {}
        self._dropped: dict[str, Counter[str]] = {}
        self._leases: list[LeaseRecord] = []
        self._shards: dict[str, ShardRecord] = {}
        self._in_use: list[str] | None = None
        self._moves: dict[str, MoveRecord] = {}

    def close(self) -> None:
        """Nothing to release: the data go with the object."""

    def create_job(self, job: JobRecord) -> None:
        with self._lock:
            if job.job_id in self._jobs:
                raise AlreadyExists(f"job {job.job_id} already exists")
            self._jobs[job.job_id] = _copy(job)
            self._steps[job.job_id] = []
            self._epochs[job.job_id] = {}

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else _copy(job)

    def list_jobs(self, state: str | None = None) -> list[JobRecord]:
        with self._lock:
            return [_copy(j) for j in self._jobs.values() if state in (None, j.state)]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        check_changes(changes)
        with self._lock:
            job = self._require(job_id)
            for name, value in changes.items():
                if name in ("done_partitions", "pending_evals"):
                    value = sorted(int(v) for v in value)  # as the SQLite store keeps them
                setattr(job, name, value)
            return _copy(job)

    def append_steps(self, job_id: str, steps: Sequence[StepRecord]) -> JobRecord:
        with self._lock:
            job = self._require(job_id)
            rows = self._steps[job_id]
            for s in steps:
                rows.append(dataclasses.replace(s, step=job.steps + 1))
                job.steps += 1
                job.samples += s.samples
                job.last_loss = s.loss
            return _copy(job)

    def steps(self, job_id: str, after: int = 0) -> list[StepRecord]:
        with self._lock:
            return [s for s in self._steps.get(job_id, []) if s.step > after]

    def steps_by_worker(self, job_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for s in self._steps.get(job_id, []):
                counts[s.worker_id] = counts.get(s.worker_id, 0) + 1
        return counts

    def record_epoch(self, job_id: str, result: EpochRecord) -> JobRecord:
        with self._lock:
            job = self._require(job_id)
            evals = self._epochs[job_id]
            evals[result.epoch] = result
            job.test_accuracy = evals[max(evals)].test_accuracy
            return _copy(job)

    def epochs(self, job_id: str) -> list[EpochRecord]:
        with self._lock:
            evals = self._epochs.get(job_id, {})
            return [evals[e] for e in sorted(evals)]

    def append_event(self, job_id: str, event: EventRecord) -> None:
        with self._lock:
            self._require(job_id)
            self._events.setdefault(job_id, []).append(event)

    def events(self, job_id: str) -> list[EventRecord]:
        with self._lock:
            return list(self._events.get(job_id, []))

    def add_dropped(self, job_id: str, batches: Mapping[str, int]) -> None:
        with self._lock:
            self._require(job_id)
            self._dropped.setdefault(job_id, Counter()).update(batches)

    def dropped(self, job_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped.get(job_id, {}))

    def save_leases(self, leases: Sequence[LeaseRecord]) -> None:
        with self._lock:
            self._leases = list(leases)

    def apply(self, writes: Sequence[Write]) -> None:
        for w in writes:
            if isinstance(w, (LeaseSaved, LeaseDropped)):
                with self._lock:
                    kept = [r for r in self._leases if r.lease_id != _lease_id(w)]
                    self._leases = [*kept, w.lease] if isinstance(w, LeaseSaved) else kept
                continue
            with self._lock:
                known = w.job_id in self._jobs
            if not known:
                continue
            if isinstance(w, ProgressSaved):
                self.update_job(
                    w.job_id,
                    epoch=w.epoch,
                    done_partitions=list(w.done_partitions),
                    pending_evals=list(w.pending_evals),
                )
            elif isinstance(w, EpochRecorded):
                self.record_epoch(w.job_id, w.record)
            elif isinstance(w, StepsAppended):
                self.append_steps(w.job_id, w.steps)
            elif isinstance(w, EventAppended):
                self.append_event(w.job_id, w.event)
            elif isinstance(w, BatchesDropped):
                self.add_dropped(w.job_id, w.batches)
            else:
                self.update_job(w.job_id, **w.changes)

    def leases(self) -> list[LeaseRecord]:
        with self._lock:
            return list(self._leases)

    def save_shard(self, shard: ShardRecord) -> None:
        with self._lock:
            old = self._shards.get(shard.shard_id)
            first = shard.registered_unix if old is None else old.registered_unix
            self._shards[shard.shard_id] = dataclasses.replace(shard, registered_unix=first)

    def shards(self) -> list[ShardRecord]:
        with self._lock:
            return [self._shards[k] for k in sorted(self._shards)]

    def save_shards_in_use(self, shard_ids: Sequence[str]) -> None:
        with self._lock:
            self._in_use = sorted(shard_ids)

    def shards_in_use(self) -> list[str] | None:
        with self._lock:
            return None if self._in_use is None else list(self._in_use)

    def begin_move(self, move: MoveRecord) -> None:
        with self._lock:
            self._moves[move.job_id] = move

    def end_move(self, job_id: str) -> None:
        with self._lock:
            self._moves.pop(job_id, None)

    def moves(self) -> list[MoveRecord]:
        with self._lock:
            return [self._moves[k] for k in sorted(self._moves)]

    def readdress_shard(self, shard_id: str, address: str) -> list[str]:
        moved = []
        with self._lock:
            for job in self._jobs.values():
                slices = [readdress(s, shard_id, address) for s in job.shards]
                if job.state in (PENDING, RUNNING) and slices != job.shards:
                    job.shards = slices
                    moved.append(job.job_id)
        return moved

    def _require(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}")
        return job
