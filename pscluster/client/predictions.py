"""A predict job's outputs, read from the FetchPredictions stream into one array as they come.

The first chunk gives the dtype and shape of the whole array, so its memory (or its ``.npy``
file) is allocated once and each chunk's bytes are copied into place: the outputs are never
held twice, and a file is written without holding them in memory at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from pscluster.client.errors import PSClusterError
from pscluster.errors import PSError
from pscluster.transport import wire
from pscluster.v1 import coordinator_pb2 as co_pb2

_DTYPES = {"float32": np.float32, "int64": np.int64}


def _header(
    chunks: Iterator[co_pb2.PredictionChunk], what: str
) -> tuple[np.dtype[np.generic], tuple[int, ...], co_pb2.PredictionChunk]:
    first = next(chunks, None)
    if first is None or first.dtype not in _DTYPES:
        raise PSClusterError(f"{what}: the coordinator sent no dtype and shape first")
    return np.dtype(_DTYPES[first.dtype]), tuple(int(d) for d in first.shape), first


def _data(first: co_pb2.PredictionChunk, rest: Iterator[co_pb2.PredictionChunk]) -> Iterator[bytes]:
    yield first.data
    for chunk in rest:
        yield chunk.data


def _fill(
    array: np.ndarray,
    first: co_pb2.PredictionChunk,
    rest: Iterator[co_pb2.PredictionChunk],
    what: str,
) -> None:
    try:
        wire.fill(memoryview(array.reshape(-1).view(np.uint8).data), _data(first, rest))
    except PSError as e:
        raise PSClusterError(f"{what}: {e}") from e


def read(stream: Iterable[co_pb2.PredictionChunk], what: str) -> torch.Tensor:
    """The whole array as a tensor (float32 or int64), in input order."""
    chunks = iter(stream)
    dtype, shape, first = _header(chunks, what)
    array = np.empty(shape, dtype=dtype)
    _fill(array, first, chunks, what)
    return torch.from_numpy(array)


def write_npy(stream: Iterable[co_pb2.PredictionChunk], path: Path, what: str) -> tuple[int, ...]:
    """The array written to ``path`` as a ``.npy`` file as it streams in (through a temporary
    file: an interrupted fetch leaves no half-written file under the name); its shape."""
    chunks = iter(stream)
    dtype, shape, first = _header(chunks, what)
    tmp = path.with_name(path.name + ".part")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        _fill(array, first, chunks, what)
        array.flush()
        del array
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return shape
