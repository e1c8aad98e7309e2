"""A predict job's outputs on the coordinator: one part per partition as workers hand them in,
read back in partition order (which is input order) when the client fetches them.

A part is two files under ``jobs/<id>/predictions/``: ``part-00003.bin`` (the outputs'
bytes, little-endian, C order) and ``part-00003.json`` (dtype, shape, the seconds each phase
took). Each is written to a temporary file, synced and renamed, the data first: the JSON is
the part's commit, so a coordinator that dies mid-upload leaves no part claiming bytes it
does not have, and a part is durable before its lease is recorded done. A partition scored
twice (its worker died after uploading, a retry after a lost reply) is written twice with
the same rows; the last write stands. Nothing is copied at the end: the fetch streams the
parts one after the other.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pscluster.coordinator import blobs
from pscluster.coordinator.blobs import BlobStore
from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

ITEMSIZE = {"float32": 4, "int64": 8}
# A part is refused beyond this (a worker claiming an absurd shape would fill the disk).
MAX_PART_BYTES = 4 << 30
RECEIVE = "receive"


@dataclass(frozen=True)
class Part:
    """One partition's outputs as stored."""

    partition: int
    dtype: str
    shape: tuple[int, ...]
    seconds: dict[str, float]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def fits(self, other: Part) -> bool:
        """Rows of the same array: the same dtype and the same shape after the rows."""
        return self.dtype == other.dtype and self.shape[1:] == other.shape[1:]

    def describe(self) -> str:
        return f"{self.dtype} rows of {list(self.shape[1:])}"


def _header(first: co_pb2.PredictionChunk, partition: int, rows: int) -> Part:
    """The part the first chunk announces, checked against the partition's rows."""
    if first.dtype not in ITEMSIZE:
        raise InvalidArgument(f"outputs of dtype {first.dtype!r}; expected {list(ITEMSIZE)}")
    shape = tuple(int(d) for d in first.shape)
    if not shape or shape[0] != rows:
        raise InvalidArgument(
            f"partition {partition} has {rows} rows but its outputs have shape {list(shape)}"
        )
    seconds = {k: float(v) for k, v in first.seconds.items() if math.isfinite(v) and v >= 0}
    part = Part(partition, first.dtype, shape, seconds)
    if part.nbytes > MAX_PART_BYTES:
        raise InvalidArgument(f"outputs of shape {list(shape)} exceed {MAX_PART_BYTES} bytes")
    return part


class PredictionStore:
    def __init__(self, store: BlobStore, chunk_bytes: int) -> None:
        self.blobs = store
        self.chunk_bytes = chunk_bytes

    def _folder(self, job_id: str) -> Path:
        # Through the blob store's path, which refuses a job id that could leave its folder.
        return self.blobs.path(job_id, blobs.DATASET).parent / "predictions"

    def _files(self, job_id: str, partition: int) -> tuple[Path, Path]:
        base = self._folder(job_id) / f"part-{partition:05d}"
        return base.with_suffix(".bin"), base.with_suffix(".json")

    def write(
        self,
        job_id: str,
        partition: int,
        rows: int,
        first: co_pb2.PredictionChunk,
        rest: Iterable[co_pb2.PredictionChunk],
    ) -> Part:
        """Store a partition's outputs from a CompletePrediction stream; InvalidArgument (and
        nothing stored) if they do not fit the partition or the parts already stored."""
        started = time.monotonic()
        part = _header(first, partition, rows)
        stored = self.any_part(job_id)
        if stored is not None and not part.fits(stored):
            raise InvalidArgument(
                f"partition {partition}'s outputs are {part.describe()}, but partition "
                f"{stored.partition}'s are {stored.describe()}: the model's output shape must "
                "not depend on the rows"
            )
        data, meta = self._files(job_id, partition)
        data.parent.mkdir(parents=True, exist_ok=True)
        blobs.write_atomically(data, _checked(part, first, rest))
        part.seconds[RECEIVE] = time.monotonic() - started
        record = {"dtype": part.dtype, "shape": list(part.shape), "seconds": part.seconds}
        blobs.write_atomically(meta, [json.dumps(record).encode()])
        return part

    def part(self, job_id: str, partition: int) -> Part | None:
        """The stored part of ``partition`` (None: not handed in yet)."""
        meta = self._files(job_id, partition)[1]
        try:
            record = json.loads(meta.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise InvalidArgument(
                f"job {job_id}: stored part {partition} is unreadable: {e}"
            ) from e
        shape = tuple(int(d) for d in record["shape"])
        return Part(partition, str(record["dtype"]), shape, dict(record.get("seconds", {})))

    def any_part(self, job_id: str) -> Part | None:
        found = sorted(self._folder(job_id).glob("part-*.json"))
        return self.part(job_id, int(found[0].stem.split("-")[1])) if found else None

    def parts(self, job_id: str, partitions: int) -> list[Part]:
        """Every part, in order; FailedPrecondition naming the missing ones, InvalidArgument
        if they are not rows of one array."""
        found = [self.part(job_id, p) for p in range(partitions)]
        missing = [p for p, part in enumerate(found) if part is None]
        if missing:
            raise FailedPrecondition(
                f"job {job_id}: partitions {missing[:10]} have no stored outputs "
                f"({len(missing)} of {partitions})"
            )
        ready = [p for p in found if p is not None]
        odd = [p for p in ready if not p.fits(ready[0])]
        if odd:
            raise InvalidArgument(
                f"job {job_id}: partition {odd[0].partition}'s outputs are {odd[0].describe()} "
                f"but partition 0's are {ready[0].describe()}"
            )
        return ready

    def seconds(self, job_id: str, partitions: int) -> dict[str, float]:
        """Seconds by phase summed over the parts stored so far."""
        total: dict[str, float] = {}
        for p in range(partitions):
            part = self.part(job_id, p)
            for phase, value in (part.seconds if part else {}).items():
                total[phase] = total.get(phase, 0.0) + value
        return total

    def chunks(self, job_id: str, partitions: int) -> Iterator[co_pb2.PredictionChunk]:
        """The whole array: a first chunk with its dtype and shape, then the parts' bytes in
        partition order. The parts are checked before the first chunk is asked for."""
        parts = self.parts(job_id, partitions)
        rows = sum(p.shape[0] for p in parts)
        shape = [rows, *parts[0].shape[1:]]

        def stream() -> Iterator[co_pb2.PredictionChunk]:
            yield co_pb2.PredictionChunk(dtype=parts[0].dtype, shape=shape)
            for part in parts:
                with self._files(job_id, part.partition)[0].open("rb") as f:
                    while piece := f.read(self.chunk_bytes):
                        yield co_pb2.PredictionChunk(data=piece)

        return stream()


def _checked(
    part: Part, first: co_pb2.PredictionChunk, rest: Iterable[co_pb2.PredictionChunk]
) -> Iterator[bytes]:
    """The stream's bytes, refused as soon as they exceed the announced shape, and at the end
    if they fall short of it."""
    written = 0
    for chunk in _all(first, rest):
        written += len(chunk.data)
        if written > part.nbytes:
            raise InvalidArgument(
                f"partition {part.partition}'s outputs carry more than the {part.nbytes} bytes "
                f"their shape {list(part.shape)} holds"
            )
        yield chunk.data
    if written != part.nbytes:
        raise InvalidArgument(
            f"partition {part.partition}'s outputs carry {written} bytes; their shape "
            f"{list(part.shape)} needs {part.nbytes} (an upload cut short)"
        )


def _all(
    first: co_pb2.PredictionChunk, rest: Iterable[co_pb2.PredictionChunk]
) -> Iterator[co_pb2.PredictionChunk]:
    yield first
    for chunk in rest:
        if chunk.worker_id or chunk.lease_id or chunk.dtype or chunk.shape:
            raise InvalidArgument("only the first chunk may name the lease, dtype and shape")
        yield chunk
