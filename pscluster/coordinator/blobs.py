"""Job blobs as files: ``<state_dir>/jobs/<job_id>/<name>.safetensors``.

Datasets and models can be large, so they live beside the database rather than in it, and
are written to a temporary file and renamed: a crash never leaves a half-written blob under
the real name, so a restarted coordinator serves either the whole model or none.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pscluster.errors import InvalidArgument, NotFound, OutOfRange

DATASET = "dataset"
INITIAL_STATE = "initial_state"
MODEL = "model"
TEACHER = "teacher"  # a distillation job's teacher: another job's model, linked
NAMES = (DATASET, INITIAL_STATE, MODEL, TEACHER)
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, job_id: str, name: str) -> Path:
        # Both parts become a file path: refuse anything that could leave the jobs folder.
        if name not in NAMES:
            raise InvalidArgument(f"unknown blob {name!r}; expected one of {list(NAMES)}")
        if not _JOB_ID.match(job_id):
            raise InvalidArgument(f"job id {job_id!r} is not a valid job id")
        return self.root / job_id / f"{name}.safetensors"

    def write(self, job_id: str, name: str, data: bytes | bytearray | memoryview) -> Path:
        return self.write_stream(job_id, name, [data])

    def write_stream(
        self, job_id: str, name: str, parts: Iterable[bytes | bytearray | memoryview]
    ) -> Path:
        """:meth:`write` from pieces produced one at a time (a model streamed from shards)."""
        target = self.path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, parts)
        return target

    def link(self, source_job: str, source_name: str, job_id: str, name: str) -> Path:
        """Another job's blob as one of this job's: a hard link (blobs are never written in
        place, only replaced, so the two names cannot diverge), a copy where links do not
        work."""
        target = self.path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = self.path(source_job, source_name)
        try:
            os.link(origin, target)
        except OSError:
            shutil.copyfile(origin, target)
        return target

    def exists(self, job_id: str, name: str) -> bool:
        return self.path(job_id, name).is_file()

    def read(self, job_id: str, name: str) -> bytes:
        path = self.path(job_id, name)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"job {job_id} has no {name} blob") from e

    def iter_chunks(
        self, job_id: str, name: str, chunk_bytes: int, offset: int = 0, length: int = 0
    ) -> Iterator[bytes]:
        """The blob (or ``length`` bytes of it from ``offset``; 0: to its end) in chunks, read
        lazily so a large model is never held whole in memory.

        The file is opened and the range checked before the first chunk is asked for, so a
        missing blob or a range past its end fails the call up front, not midway.
        """
        path = self.path(job_id, name)
        try:
            f = path.open("rb")
        except FileNotFoundError as e:
            raise NotFound(f"job {job_id} has no {name} blob") from e
        size = os.fstat(f.fileno()).st_size
        end = offset + length if length else size
        if offset > size or end > size:
            f.close()
            raise OutOfRange(
                f"bytes [{offset}, {end}) are past the end of job {job_id}'s {name} blob "
                f"({size} bytes)"
            )

        def read_range() -> Iterator[bytes]:
            with f:
                f.seek(offset)
                left = end - offset
                while left and (chunk := f.read(min(chunk_bytes, left))):
                    left -= len(chunk)
                    yield chunk

        return read_range()


def write_atomically(target: Path, parts: Iterable[bytes | bytearray | memoryview]) -> None:
    """`target` holds all of `parts`, synced, or is as it was: written to a temporary file
    beside it, then renamed over it (a crash leaves no half-written file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
