"""A job's write-ahead log: records appended to numbered segment files, synced by group commit.

A record is ``<u32 length><u32 crc32> <u8 type><u32 meta length> meta blob``: ``length`` counts
everything after the first eight bytes and the CRC covers it, so a torn write (a crash in the
middle of a record) or a flipped bit is caught when the log is read back. ``meta`` is JSON (the
push header, the member list, ...); ``blob`` is raw bytes (a push's payload as it came off the
wire, so a compressed push stays small on disk, then its buffer delta). No pickle anywhere.

Decisions are appended under the job's lock, so the log's order is the order in which the job
applied what it logs. A push's payload, the bulk of the bytes, is appended before that, outside
the job's lock, as a ``PUSH_DATA`` record that its ``PUSH`` record then refers to: writing and
checksumming megabytes never holds up the job's other pushes and pulls (appends take the log's
own lock only for the write itself). :meth:`WriteAheadLog.sync` runs outside the job's lock:
one fsync covers every record written before it, and pushers that arrive while an fsync is
running wait for the next one together (group commit).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

FsyncMode = Literal["always", "interval", "never"]
_FRAME = struct.Struct("<II")  # length of the rest, crc32 of the rest
_KIND = struct.Struct("<BI")  # record type, meta length
_MAX_RECORD = (1 << 32) - 1
# How long one wait on another thread's fsync lasts before the waiter looks again.
_SYNC_POLL_SECONDS = 1.0


class RecordType(enum.IntEnum):
    PUSH = 1  # a push that reached the consistency policy: its header and wire payload
    MEMBERS = 2  # a SetMembers that was not older than the generation in force
    READ = 3  # a pull by an uncounted (excluded or re-entering) member: its clock moves
    ADMIT = 4  # ids a lookup admitted into a dynamic table: their rows were created
    CONSISTENCY = 5  # a SetConsistency newer than the revision in force (mode "auto")
    # A push's payload, logged as it arrived, before its decision: the PUSH record that follows
    # in the same segment (meta "data": true) carries the header and refers to it.
    PUSH_DATA = 6


@dataclass(frozen=True)
class Record:
    type: RecordType
    meta: dict[str, Any]
    blob: bytes


def encode(
    kind: RecordType,
    meta: dict[str, Any],
    blob: bytes | bytearray | memoryview,
    tail: bytes = b"",
) -> list[bytes | memoryview]:
    """The buffers of one record, for one ``writev`` (the blob is not copied). ``tail`` is
    appended to the blob (a push's buffer delta after its payload)."""
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    head = _KIND.pack(kind, len(meta_bytes)) + meta_bytes
    body = memoryview(blob).cast("B")
    length = len(head) + body.nbytes + len(tail)
    if length > _MAX_RECORD:
        raise ValueError(f"a log record holds at most {_MAX_RECORD} bytes, got {length}")
    crc = zlib.crc32(tail, zlib.crc32(body, zlib.crc32(head)))
    buffers: list[bytes | memoryview] = [_FRAME.pack(length, crc) + head, body]
    if tail:
        buffers.append(tail)
    return buffers


def segment_path(folder: Path, number: int) -> Path:
    return folder / f"wal-{number:012d}.log"


def segment_number(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def segments(folder: Path) -> list[Path]:
    """The folder's log segments, oldest first."""
    return sorted(folder.glob("wal-*.log"), key=segment_number)


def fsync_dir(folder: Path) -> None:
    """Make a file's creation, rename or removal in ``folder`` itself durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """Appends to one segment at a time; :meth:`roll` moves on to the next."""

    def __init__(self, path: Path, fsync: FsyncMode, interval_seconds: float) -> None:
        self._fsync = fsync
        self._fd = self._open(path)
        self.path = path
        self.bytes = 0  # written to the current segment
        self._written = 0  # tickets: records appended, ever
        self._synced = 0  # records known to be on disk
        self._syncing = False
        self._cond = threading.Condition()
        # Appends come from the job's lock and, for payloads, from outside it: one at a time.
        self._write_lock = threading.RLock()
        self.rolls = 0  # segments moved on to: a payload and its decision share one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if fsync == "interval":
            self._thread = threading.Thread(
                target=self._sync_every, args=(interval_seconds,), name="wal-fsync", daemon=True
            )
            self._thread.start()

    @staticmethod
    def _open(path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(path.parent)
        return fd

    def append(
        self,
        kind: RecordType,
        meta: dict[str, Any],
        blob: bytes | bytearray | memoryview = b"",
        tail: bytes = b"",
    ) -> int:
        """Write one record; returns its ticket for :meth:`sync`. Encoded (checksummed) before
        the log's lock is taken: only the write itself is one at a time."""
        return self.append_counted(kind, meta, blob, tail)[0]

    def append_counted(
        self,
        kind: RecordType,
        meta: dict[str, Any],
        blob: bytes | bytearray | memoryview = b"",
        tail: bytes = b"",
    ) -> tuple[int, int]:
        """:meth:`append`, also returning ``rolls`` as of the write (which segment took it)."""
        buffers = encode(kind, meta, blob, tail)
        total = sum(memoryview(b).nbytes for b in buffers)
        with self._write_lock:
            written = os.writev(self._fd, buffers)
            if written != total:  # a short write: finish it from where it stopped
                rest = b"".join(bytes(b) for b in buffers)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
            self.bytes += total
            self._written += 1
            return self._written, self.rolls

    def tail(self) -> int:
        """The ticket of the newest record: a reply that depends on all of them waits for it."""
        return self._written

    def sync(self, ticket: int) -> None:
        """With fsync "always", return once record ``ticket`` is on disk; otherwise at once."""
        if self._fsync == "always":
            self._flush(ticket)

    def _flush(self, ticket: int) -> None:
        with self._cond:
            while self._synced < ticket:
                if self._syncing:  # someone's fsync is running; the next one may cover us
                    self._cond.wait(_SYNC_POLL_SECONDS)
                    continue
                self._syncing = True
                upto, fd = self._written, self._fd
                self._cond.release()
                try:
                    os.fsync(fd)
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self._synced = max(self._synced, upto)

    def _sync_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._flush(self._written)
            except OSError as exc:  # the log was closed under us (job dropped)
                log.debug("interval fsync of %s stopped: %s", self.path, exc)
                return

    def roll(self, path: Path) -> None:
        """Continue in a new segment (the caller holds the job's lock). The old one is synced
        first: pushers waiting on it are answered only once their records are on disk."""
        with self._write_lock, self._cond:
            while self._syncing:
                self._cond.wait(_SYNC_POLL_SECONDS)
            if self._fsync != "never":
                os.fsync(self._fd)
            self._synced = self._written
            os.close(self._fd)
            self._fd = self._open(path)
            self.path = path
            self.bytes = 0
            self.rolls += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the interval thread and close the segment (no final fsync: a crash does none)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._write_lock, self._cond:
            while self._syncing:
                self._cond.wait(_SYNC_POLL_SECONDS)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_records(path: Path, *, last: bool) -> Iterator[Record]:
    """The records of one segment, in order.

    A torn or corrupt record ends the segment: in the last segment that is the tail a crash
    cut off (it was never acknowledged: replies wait for the write), so the file is truncated
    there with a warning and appends go on after good records. In an older segment (synced when
    the log rolled on) it means the disk lost data: :class:`CorruptSegment` after the good ones.
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            problem = ""
            frame = f.read(_FRAME.size)
            if len(frame) < _FRAME.size:
                problem = "a torn record header"
            else:
                length, crc = _FRAME.unpack(frame)
                body = f.read(length)
                if len(body) < length:
                    problem = f"a torn record ({len(body)} of {length} bytes)"
                elif zlib.crc32(body) != crc or length < _KIND.size:
                    problem = "a record whose CRC32 does not match (corrupt)"
            if problem:
                _cut(path, offset, size, problem, last=last)
                return
            kind, meta_len = _KIND.unpack_from(body)
            meta = json.loads(body[_KIND.size : _KIND.size + meta_len])
            yield Record(RecordType(kind), meta, body[_KIND.size + meta_len :])
            offset += _FRAME.size + length


class CorruptSegment(Exception):
    """A segment other than the last is damaged: the records after the damage are lost."""


def _cut(path: Path, offset: int, size: int, problem: str, *, last: bool) -> None:
    if not last:
        raise CorruptSegment(
            f"{path}: {problem} at byte {offset} of {size}, in a segment that was synced "
            "before the log moved on"
        )
    log.warning(
        "%s: %s at byte %d of %d; truncating the unacknowledged tail (%d bytes)",
        path,
        problem,
        offset,
        size,
        size - offset,
    )
    with path.open("r+b") as f:
        f.truncate(offset)
        os.fsync(f.fileno())
