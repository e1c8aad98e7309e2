"""What a data source is: something that opens a split as a map-style sample set.

A worker opens the job's source for "train" and "test" and reads only the samples its leases
name (:mod:`pscluster.data.loading` builds their batches), so the data never passes through
the coordinator and no process holds more of it than it reads. Sources are pluggable: the
user's own function, the built-in ``.npy`` and Parquet readers, and the uploaded arrays are
each a module of this package, registered in :data:`pscluster.data.sources.SOURCES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from pscluster.data.inputs import Inputs
from pscluster.errors import InvalidArgument

SPLITS = ("train", "test")
Sample = tuple[Any, Any]  # (x, y): x a tensor or array, a tuple or a dict of them


@dataclass(frozen=True)
class ReadyBatch:
    """What a built-in source's ``__getitems__`` returns: the batch already stacked (a
    fancy index on an array rather than one sample at a time, then a stack)."""

    x: Inputs
    y: torch.Tensor


class DataNotFound(InvalidArgument):
    """The source's files are not where it was told they are. The SDK, which opens the
    source to check it, takes this for data that only the workers can see."""


class SampleSet(Protocol):
    """A map-style dataset (``torch.utils.data.Dataset`` is one): ``set[i]`` is sample i.

    A set may also define ``__getitems__(indices) -> list[Sample]`` (as torch's DataLoader
    uses) to read a batch at once, and ``block_rows``: rows that are cheap to read together
    only (see :mod:`pscluster.data.partitions`).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class DataSource(Protocol):
    kind: ClassVar[str]  # the spec's ``data.source``
    # Per-sample seeding (augmentation): the global random generators are seeded from
    # (job seed, epoch, partition, index) before each sample is read.
    seeds_samples: ClassVar[bool]

    def open(self, split: str) -> SampleSet:
        """The split's samples; raises with a message that says what to fix."""
        ...


def block_rows(samples: SampleSet) -> int:
    rows = getattr(samples, "block_rows", 1)
    if not isinstance(rows, int) or rows < 1:
        raise InvalidArgument(f"the dataset's block_rows must be an integer >= 1, got {rows!r}")
    return rows


def args_path(args: Mapping[str, Any], kind: str) -> str:
    path = args.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"data source {kind!r} needs args {{'path': <folder>}}")
    return path


@dataclass(frozen=True)
class Gather:
    """How to read rows asked for in any order from a source laid out in pieces (``.npy``
    shards, Parquet row groups): each piece's rows in ascending order, piece after piece (one
    pass over each file), and how to put the rows read back in the order asked for."""

    runs: list[tuple[int, np.ndarray]]  # (piece, its rows within the piece, ascending)
    back: np.ndarray  # the concatenated runs' rows, indexed by this: the order asked for

    @classmethod
    def plan(cls, indices: Sequence[int], starts: np.ndarray, where: str = "") -> Gather:
        """``starts``: each piece's first row, then the row count. IndexError for a row out
        of range (``where`` ends its message)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = int(starts[-1])
        if idx.size and (idx.min() < 0 or idx.max() >= rows):
            bad = idx[(idx < 0) | (idx >= rows)][0]
            raise IndexError(f"sample {bad} out of range 0..{rows - 1}{where}")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        pieces = np.searchsorted(starts, ordered, side="right") - 1
        runs = [
            (int(pieces[run[0]]), ordered[run] - starts[pieces[run[0]]])
            for run in np.split(np.arange(len(ordered)), np.flatnonzero(np.diff(pieces)) + 1)
            if run.size
        ]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return cls(runs, back)


def collate(samples: list[Sample] | ReadyBatch, what: str) -> tuple[Inputs, torch.Tensor]:
    """One batch from samples: x stacked as the samples give it (one array, a tuple or a
    dict), floats as float32 and integers as int64, as uploaded arrays are."""
    if isinstance(samples, ReadyBatch):
        return samples.x, samples.y
    if not samples:
        raise InvalidArgument(f"{what}: an empty batch")
    try:
        xs = [s[0] for s in samples]
        ys = [s[1] for s in samples]
    except (TypeError, IndexError, KeyError) as e:
        raise InvalidArgument(
            f"{what}: a sample must be a pair (x, y), got {type(samples[0]).__name__}"
        ) from e
    first = xs[0]
    if isinstance(first, Mapping):
        x: Inputs = {str(k): _stack([s[k] for s in xs], f"{what} x[{k!r}]") for k in first}
    elif isinstance(first, (tuple, list)):
        x = tuple(_stack([s[i] for s in xs], f"{what} x[{i}]") for i in range(len(first)))
    else:
        x = _stack(xs, f"{what} x")
    return x, _stack(ys, f"{what} y")


def _stack(values: list[Any], what: str) -> torch.Tensor:
    try:
        if isinstance(values[0], torch.Tensor):
            t = torch.stack(values)
        else:
            t = torch.from_numpy(np.stack([np.asarray(v) for v in values]))
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidArgument(f"{what}: samples do not stack into a batch ({e})") from e
    return normalise(t, what)


def normalise(t: torch.Tensor, what: str) -> torch.Tensor:
    """Floats as float32, integers and booleans as int64: what a job's tensors are."""
    if t.is_complex():
        raise InvalidArgument(f"{what} is {t.dtype}; complex data is not supported")
    if t.is_floating_point():
        return t if t.dtype == torch.float32 else t.to(torch.float32)
    return t if t.dtype == torch.int64 else t.to(torch.int64)
