"""Uploaded arrays, fetched by partition: a worker fetches only the rows of its leases.

The SDK stores the training rows in the order the job's seed deals them into partitions
(:meth:`pscluster.data.dataset.Dataset.to_blob`), so a partition is one contiguous range of
rows of each training tensor. A worker reads the blob's header, then, for each lease, only
that range of bytes of each tensor (``FetchBlob`` with an offset and a length). It keeps the
partitions it fetched up to ``data_cache_mb`` (the least recently leased dropped first,
:class:`~pscluster.data.byte_cache.ByteLRU`; the lease's own is held while it is read), so
that a job whose training rows fit is fetched once per worker, not once per lease: a lease of
a few batches spent more time in its two FetchBlob calls than in reading its batches
(bench/lease_size.py). The test split is fetched whole, once. A blob stored in the given
order (an older SDK) is fetched whole, as it always was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from pscluster.data import inputs
from pscluster.data.byte_cache import ByteLRU
from pscluster.data.dataset import Dataset, stored_order, structure_of_header
from pscluster.data.inputs import Inputs, Structure
from pscluster.data.partitions import row_order
from pscluster.data.sources.arrays import ArraySamples, UploadedSource, row_of
from pscluster.data.sources.base import DataSource, ReadyBatch, Sample
from pscluster.errors import InvalidArgument
from pscluster.model import state
from pscluster.model.partition import BalancedRanges
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

_WHAT = "the uploaded data"


class RemoteBlob:
    """Byte ranges of one of a job's blobs, read from the coordinator."""

    def __init__(self, stub: co_grpc.CoordinatorStub, job_id: str, name: str, timeout: float):
        self.stub, self.job_id, self.name, self.timeout = stub, job_id, name, timeout

    def read(self, offset: int, length: int) -> bytearray:
        data = bytearray()
        if length == 0:
            return data
        request = co_pb2.FetchBlobRequest(
            job_id=self.job_id, blob=self.name, offset=offset, length=length
        )
        for chunk in self.stub.FetchBlob(request, timeout=self.timeout):
            data += chunk.data
        if len(data) != length:
            raise InvalidArgument(f"{_WHAT}: asked for {length} bytes, got {len(data)}")
        return data

    def header(self) -> tuple[dict[str, Any], int]:
        """The safetensors header, and where the tensors' bytes begin."""
        length = int.from_bytes(self.read(0, 8), "little")
        try:
            parsed = json.loads(bytes(self.read(8, length)))
        except ValueError as e:
            raise InvalidArgument(f"{_WHAT} is not a valid safetensors file: {e}") from e
        return parsed, 8 + length


class BlobRows:
    """One tensor of the blob: where its bytes are, and how to read rows of it."""

    def __init__(self, blob: RemoteBlob, info: dict[str, Any], start: int) -> None:
        self.blob = blob
        self.dtype = state.dtype_of(info["dtype"], _WHAT)
        self.shape = [int(d) for d in info["shape"]]
        self.begin = start + int(info["data_offsets"][0])
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        self.row_bytes = math.prod(self.shape[1:]) * itemsize

    def rows(self, first: int, end: int) -> torch.Tensor:
        data = self.blob.read(self.begin + first * self.row_bytes, (end - first) * self.row_bytes)
        shape = [end - first, *self.shape[1:]]
        if not data:
            return torch.empty(shape, dtype=self.dtype)
        return torch.frombuffer(data, dtype=self.dtype).view(shape)


@dataclass(frozen=True)
class _Partition:
    """One partition's rows as fetched, and where each of its row indices is among them."""

    key: tuple[int, int]  # (partitions, partition)
    x: Inputs
    y: torch.Tensor
    sorted: np.ndarray  # its row indices, sorted
    sorter: np.ndarray  # where each of them is in x and y


class LeasedRows:
    """The training split, fetched a partition at a time (:meth:`prepare` before reading) and
    kept while the partitions held fit in ``cache_bytes``."""

    block_rows = 1

    def __init__(
        self, x: list[BlobRows], y: BlobRows, structure: Structure, seed: int, cache_bytes: int
    ) -> None:
        self.x_entries, self.y_entry, self.structure, self.seed = x, y, structure, seed
        self.rows = y.shape[0]
        self._row_bytes = sum(e.row_bytes for e in [*x, y])  # x and y of one training row
        self._held: ByteLRU[tuple[int, int], _Partition] = ByteLRU(cache_bytes)
        self._current: _Partition | None = None  # the lease's, kept or not
        self.fetches = 0  # partitions fetched from the coordinator

    def __len__(self) -> int:
        return self.rows

    @property
    def held_bytes(self) -> int:
        """What the partitions kept for later leases take."""
        return self._held.bytes

    def prepare(self, partitions: int, partition: int) -> None:
        """Read from the rows of ``partition``: fetched now unless already held."""
        key = (partitions, partition)
        if self._current is not None and self._current.key == key:
            return
        held = self._held.get(key)
        if held is None:
            self._current = None  # the last lease's rows go first
            held = self._fetch(partitions, partition)
            self._held.put(key, held, self._row_bytes * len(held.sorted))
        self._current = held

    def _fetch(self, partitions: int, partition: int) -> _Partition:
        r = BalancedRanges().split(self.rows, partitions)[partition]
        mine = row_order(self.rows, self.seed)[r.start : r.end]
        sorter = np.argsort(mine)
        x = self.structure.build([e.rows(r.start, r.end) for e in self.x_entries])
        y = self.y_entry.rows(r.start, r.end)
        self.fetches += 1
        return _Partition((partitions, partition), x, y, mine[sorter], sorter)

    def _local(self, indices: Sequence[int]) -> torch.Tensor:
        """Where the asked-for rows are in the partition being read."""
        held = self._current
        if held is None:
            raise InvalidArgument("no partition is held: prepare(partitions, partition) first")
        wanted = np.asarray(indices, dtype=np.int64)
        at = np.searchsorted(held.sorted, wanted).clip(0, max(len(held.sorted) - 1, 0))
        if len(held.sorted) == 0 or not np.array_equal(held.sorted[at], wanted):
            raise InvalidArgument(
                f"rows asked for are not all in the partition held {held.key}; "
                "prepare(partitions, partition) before reading"
            )
        return torch.from_numpy(held.sorter[at])

    def __getitems__(self, indices: Sequence[int]) -> ReadyBatch:
        local = self._local(indices)
        assert self._current is not None
        return ReadyBatch(inputs.take(self._current.x, local), self._current.y[local])

    def __getitem__(self, index: int) -> Sample:
        batch = self.__getitems__([index])
        return row_of(batch.x, 0), batch.y[0]


class LeasedUpload:
    kind: ClassVar[str] = "uploaded"
    seeds_samples: ClassVar[bool] = False

    def __init__(
        self, blob: RemoteBlob, header: dict[str, Any], start: int, seed: int, cache_bytes: int
    ) -> None:
        self.structure = structure_of_header(header)
        keys = self.structure.keys
        self.entries = {
            name: BlobRows(blob, info, start)
            for name, info in header.items()
            if name != "__metadata__"
        }
        self.x_names = {s: [f"{s}_x/{k}" for k in keys] or [f"{s}_x"] for s in ("train", "test")}
        missing = [
            n
            for s in ("train", "test")
            for n in [*self.x_names[s], f"{s}_y"]
            if n not in self.entries
        ]
        if missing:
            raise InvalidArgument(f"{_WHAT} lacks {missing}")
        self.seed, self.cache_bytes = seed, cache_bytes

    def open(self, split: str) -> LeasedRows | ArraySamples:
        x = [self.entries[n] for n in self.x_names[split]]
        y = self.entries[f"{split}_y"]
        if split == "train":
            return LeasedRows(x, y, self.structure, self.seed, self.cache_bytes)
        return ArraySamples(
            self.structure.build([e.rows(0, e.shape[0]) for e in x]), y.rows(0, y.shape[0])
        )


def open_uploaded(
    stub: co_grpc.CoordinatorStub, job_id: str, timeout: float, seed: int, cache_bytes: int
) -> DataSource:
    """The job's uploaded arrays, by partition when they are stored in its seed's order
    (``cache_bytes`` of fetched partitions kept between leases)."""
    blob = RemoteBlob(stub, job_id, "dataset", timeout)
    header, start = blob.header()
    if stored_order(header) == seed:
        return LeasedUpload(blob, header, start, seed, cache_bytes)
    whole = blob.read(0, start + _data_bytes(header))
    return UploadedSource(Dataset.from_buffer(whole))


def _data_bytes(header: dict[str, Any]) -> int:
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    return max(ends, default=0)
