"""One job's durability: its folder, its write-ahead log and when it takes checkpoints.

Folder layout (``<shard_data_dir>/<job id, %-quoted>/``)::

    checkpoint-000000000003.safetensors   state before segment 3's first record
    wal-000000000003.log                  records since, in the order they were applied
    wal-000000000004.log                  ... (segments only grow in number)

Checkpoint ``n`` covers every segment numbered below ``n``. After a new checkpoint is durable,
files numbered below the *previous* checkpoint are deleted: one older checkpoint and the log
after it stay, so a damaged newest checkpoint still leaves a full way back.

A job with embedding tables checkpoints incrementally: a "delta" checkpoint holds the dense
state whole but only the table rows changed since the checkpoint before it (``delta_of`` in
its metadata), so a 50M-row table costs the rows a few thousand steps touched, not 3 GB. At
most ``MAX_DELTAS`` deltas follow a full checkpoint, and the checkpoints a kept one builds
on are kept with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from pscluster.config import Settings
from pscluster.server.domain import PushHeader
from pscluster.server.durability.checkpoint import (
    checkpoint_base,
    checkpoint_number,
    checkpoint_path,
    checkpoints,
    write_checkpoint,
)
from pscluster.server.durability.trash import discard
from pscluster.server.durability.wal import (
    FsyncMode,
    RecordType,
    WriteAheadLog,
    fsync_dir,
    segment_number,
    segment_path,
    segments,
)

log = logging.getLogger(__name__)
# Delta checkpoints after a full one before the next full one: recovery reads the chain.
MAX_DELTAS = 8

State = tuple[dict[str, torch.Tensor], dict[str, Any]]
# The job's state_dict read under its lock ("full" or "delta"), with the given function called
# under the same hold (the journal moves its log on there): no record can fall between a
# checkpoint and the log that follows it. ShardJob.capture is one.
Capture = Callable[[Callable[[], None], str], State]


@dataclass(frozen=True)
class DurabilityConfig:
    data_dir: Path
    fsync: FsyncMode = "always"
    fsync_interval_seconds: float = 0.05
    checkpoint_seconds: float = 30.0
    checkpoint_wal_bytes: int = 256 << 20
    # The log may also grow to this many times the last checkpoint's size before the next:
    # a checkpoint rewrites the whole state, so for a large model it then costs at most this
    # fraction of what the log writes (0: only checkpoint_wal_bytes counts).
    checkpoint_log_ratio: float = 4.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DurabilityConfig | None:
        """None when ``shard_data_dir`` is unset: the shard keeps its state in memory only."""
        if settings.shard_data_dir is None:
            return None
        return cls(
            data_dir=Path(settings.shard_data_dir),
            fsync=settings.wal_fsync,
            fsync_interval_seconds=settings.wal_fsync_interval_seconds,
            checkpoint_seconds=settings.checkpoint_seconds,
            checkpoint_wal_bytes=settings.checkpoint_wal_bytes,
        )

    def job_folder(self, job_id: str) -> Path:
        # Quoted so any job id is one safe folder name ("." too, so "." and ".." are not special).
        return self.data_dir / quote(job_id, safe="-_").replace(".", "%2E")


class Journal:
    """Logs a job's inputs (called under the job's lock) and checkpoints it now and then.

    It knows the job only through the :data:`Capture` callback the job binds (so this package
    does not import the job, and the job does not hand out its lock).
    """

    def __init__(
        self,
        folder: Path,
        config: DurabilityConfig,
        segment: int,
        checkpoint_version: int,
        *,
        base: int | None = None,
    ) -> None:
        """``base``: the checkpoint the next one may be a delta of (None: the next is full,
        as after a recovery, whose replayed rows are not all marked changed)."""
        self.folder = folder
        self._config = config
        self._segment = segment
        self._wal = WriteAheadLog(
            segment_path(folder, segment), config.fsync, config.fsync_interval_seconds
        )
        self.checkpoint_version = checkpoint_version
        self._last_checkpoint = time.monotonic()
        self._checkpointing = threading.Lock()
        self._starting = threading.Lock()  # guards _writer and _closed
        self._writer: threading.Thread | None = None  # the checkpoint being written, if any
        self._size = 0  # bytes of the last checkpoint's tensors
        self._closed = False
        self._capture: Capture | None = None
        self._base = base
        self._deltas = 0  # delta checkpoints since the last full one

    @classmethod
    def create(cls, job_id: str, state: State, config: DurabilityConfig) -> Journal:
        """A new job's folder with its first checkpoint (``state``: the config and initial
        values), written before InitJob replies. A leftover folder of the same id is
        replaced."""
        folder = config.job_folder(job_id)
        if folder.exists():
            log.warning("job %s: replacing the leftover folder %s", job_id, folder)
            discard(folder)
        folder.mkdir(parents=True)
        tensors, meta = state
        write_checkpoint(checkpoint_path(folder, 0), tensors, meta)
        journal = cls(folder, config, segment=0, checkpoint_version=int(meta["version"]), base=0)
        journal._size = sum(t.numel() * t.element_size() for t in tensors.values())
        return journal

    @classmethod
    def from_staged(
        cls, job_id: str, state: State, config: DurabilityConfig, staged: Path
    ) -> Journal:
        """The staged folder as the job's folder (the replaced job's files are gone by
        now: :meth:`delete`), logging from its checkpoint on."""
        folder = config.job_folder(job_id)
        discard(folder)
        staged.replace(folder)
        fsync_dir(folder.parent)
        tensors, meta = state
        journal = cls(folder, config, segment=0, checkpoint_version=int(meta["version"]), base=0)
        journal._size = sum(t.numel() * t.element_size() for t in tensors.values())
        return journal

    def bind(self, capture: Capture) -> None:
        """How checkpoints read the job (before any record is logged)."""
        self._capture = capture

    # --- called before the job's lock is taken ---

    def log_payload(self, header: PushHeader, payload: bytes | bytearray | memoryview) -> int:
        """A push's payload, before its decision (RecordType.PUSH_DATA); what to hand
        :meth:`log_push` so that its record refers to it."""
        meta = {"worker_id": header.worker_id, "seq": header.seq}
        return self._wal.append_counted(RecordType.PUSH_DATA, meta, payload)[1]

    # --- called under the job's lock ---

    def log_push(
        self,
        header: PushHeader,
        payload: bytes | bytearray | memoryview,
        logged: int | None = None,
    ) -> int:
        """The header as JSON; the blob is the payload followed by the buffer delta, whose
        length the meta gives (older records have neither it nor ``grad_scale``). A payload
        :meth:`log_payload` wrote to the current segment (``logged``) is referred to
        instead ("data": true); one a checkpoint's roll left behind is written again."""
        meta: dict[str, Any] = {
            "worker_id": header.worker_id,
            "seq": header.seq,
            "base_version": header.base_version,
            "base_clock": header.base_clock,
            "length": header.length,
            "dtype": header.dtype,
            "batch_size": header.batch_size,
            "codec": header.codec,
            "payload_bytes": header.payload_bytes,
            "grad_scale": header.grad_scale,
            "buffer_delta_bytes": len(header.buffer_delta),
        }
        if header.local_steps:  # records from before local steps in pushes have none
            meta["local_steps"] = header.local_steps
        if header.rows:  # their bytes are in the payload, after the dense part
            meta["rows"] = [[b.table, b.count, b.dtype] for b in header.rows]
        if logged is not None and logged == self._wal.rolls:
            meta["data"] = True
            return self._wal.append(RecordType.PUSH, meta, b"", header.buffer_delta)
        return self._wal.append(RecordType.PUSH, meta, payload, header.buffer_delta)

    def log_members(self, worker_ids: list[str], generation: int, excluded: list[str]) -> int:
        meta = {"worker_ids": worker_ids, "generation": generation, "excluded": excluded}
        return self._wal.append(RecordType.MEMBERS, meta)

    def log_consistency(
        self,
        mode: str,
        staleness: int,
        backup_workers: int,
        revision: int,
        trial: str = "",
        local_steps: int = 0,
    ) -> int:
        meta: dict[str, Any] = {
            "mode": mode,
            "staleness": staleness,
            "backup_workers": backup_workers,
            "revision": revision,
        }
        if trial:  # records from before trials have none
            meta["trial"] = trial
        if local_steps:  # nor from before local steps
            meta["local_steps"] = local_steps
        return self._wal.append(RecordType.CONSISTENCY, meta)

    def log_read(self, worker_id: str) -> int:
        return self._wal.append(RecordType.READ, {"worker_id": worker_id})

    def log_admit(self, table: int, ids: bytes) -> int:
        """Ids a lookup admitted into a dynamic table (int64 little-endian, in order)."""
        return self._wal.append(RecordType.ADMIT, {"table": table}, ids)

    def tail(self) -> int:
        return self._wal.tail()

    # --- called outside the job's lock ---

    def commit(self, ticket: int) -> None:
        """Return once record ``ticket`` is as durable as ``wal_fsync`` asks; start a checkpoint
        if one is due, on a thread of the journal's own: no push's reply waits for the tens of
        megabytes a checkpoint of a large model writes."""
        self._wal.sync(ticket)
        config = self._config
        due_time = time.monotonic() - self._last_checkpoint >= config.checkpoint_seconds
        due_bytes = max(config.checkpoint_wal_bytes, config.checkpoint_log_ratio * self._size)
        if self._wal.bytes >= due_bytes or (due_time and self._wal.bytes):
            self._checkpoint_later()

    def _checkpoint_later(self) -> None:
        with self._starting:
            if self._closed or (self._writer is not None and self._writer.is_alive()):
                return
            self._writer = threading.Thread(
                target=self._checkpoint_logged, name="checkpoint", daemon=True
            )
            self._writer.start()

    def _checkpoint_logged(self) -> None:
        try:
            self.checkpoint()
        except Exception:  # the log goes on: nothing is lost, the next checkpoint is tried
            log.exception("%s: a checkpoint failed; the log goes on", self.folder)

    def checkpoint(self) -> bool:
        """Snapshot the job under its lock, move the log on, write the snapshot outside the
        lock. False if another checkpoint is already being taken (or none can be)."""
        if self._capture is None or not self._checkpointing.acquire(blocking=False):
            return False
        try:
            rolled = False

            def roll() -> None:
                nonlocal rolled
                if not self._closed:
                    self._segment += 1
                    self._wal.roll(segment_path(self.folder, self._segment))
                    rolled = True

            full = self._base is None or self._deltas >= MAX_DELTAS
            tensors, meta = self._capture(roll, "full" if full else "delta")
            if not rolled:
                return False
            if meta.get("delta"):
                meta["delta_of"] = self._base
            version = int(meta["version"])
            started = time.monotonic()
            try:
                write_checkpoint(checkpoint_path(self.folder, self._segment), tensors, meta)
            except BaseException:
                self._base = None  # the rows it held count as clean now: the next is full
                raise
            self._base = self._segment
            self._size = sum(t.numel() * t.element_size() for t in tensors.values())
            self._deltas = self._deltas + 1 if meta.get("delta") else 0
            self._last_checkpoint = time.monotonic()
            self.checkpoint_version = version
            self._prune()
            log.info(
                "job %s: checkpoint %d at version %d in %.3fs",
                meta["config"]["job_id"],
                self._segment,
                version,
                self._last_checkpoint - started,
            )
            return True
        finally:
            self._checkpointing.release()

    def _prune(self) -> None:
        """Keep the newest two checkpoints, the ones they build on, and the log after the
        older of the two."""
        found = checkpoints(self.folder)
        kept = [checkpoint_number(p) for p in found][:2]
        oldest = min(kept)
        needed = set(kept)
        for number in kept:
            base = checkpoint_base(checkpoint_path(self.folder, number))
            while base is not None and base not in needed:
                needed.add(base)
                base = checkpoint_base(checkpoint_path(self.folder, base))
        for path in found:
            if checkpoint_number(path) not in needed:
                path.unlink(missing_ok=True)
        for path in segments(self.folder):
            if segment_number(path) < oldest:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop logging (the files stay): for a shard that stops, or a test's simulated crash.
        A checkpoint being written finishes first (its files are complete or absent)."""
        with self._starting:
            self._closed = True
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        self._wal.close()

    def delete(self) -> None:
        """The job was dropped: stop logging and remove its folder (its files go in the
        background: :mod:`~pscluster.server.durability.trash`)."""
        with self._checkpointing:  # not while a checkpoint is being written into it
            self.close()
            discard(self.folder)
