"""``.npy`` shards as a source: every array memory-mapped, a batch read by fancy indexing.

Layout of a split (``<path>/<split>/``), shards concatenated along axis 0 in order::

    x-00000.npy, x-00001.npy, ...    y-00000.npy, y-00001.npy, ...   (or one x.npy, y.npy)
    x.<name>-00000.npy, ...          named inputs: x is a dict name -> tensor

Arrays are opened with ``mmap_mode="r"``: opening reads only headers (and checks shapes and
dtypes); rows are then read with ``pread`` into each batch (:mod:`.npy_rows`), so a dataset
far larger than memory trains with no process (a DataLoader worker after ``fork()``)
holding more than its batches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pscluster.data.inputs import Inputs
from pscluster.data.sources.base import (
    SPLITS,
    DataNotFound,
    Gather,
    ReadyBatch,
    Sample,
    args_path,
    normalise,
)
from pscluster.data.sources.npy_rows import ShardRows
from pscluster.errors import InvalidArgument

_FILE = re.compile(r"^(x|y|x\.(?P<name>[^.-]+))(-(?P<shard>\d{5}))?\.npy$")
_HINT = "(see examples/make_big_digits.py)"


def _fail(message: str) -> InvalidArgument:
    return InvalidArgument(f"data source 'npy': {message}")


def _expected(folder: Path) -> str:
    return f"expected {folder.name}/x-00000.npy, {folder.name}/y-00000.npy, ... {_HINT}"


def _scan(folder: Path) -> dict[str, dict[int, Path]]:
    """The folder's array files by stem ("x", "y" or "x.<name>") and shard number; an
    unsharded ``x.npy`` is shard -1 so that it cannot mix with numbered shards unseen."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.glob("*.npy")):
        m = _FILE.match(path.name)
        if m is None:
            continue
        key = m.group(1)
        shard = int(m.group("shard")) if m.group("shard") else -1
        found.setdefault(key, {})[shard] = path
    return found


def _ordered(key: str, shards: dict[int, Path], folder: Path) -> list[Path]:
    """The shard files of one array in order; a gap or a mix of x.npy and x-00000.npy would
    silently drop or reorder rows, so both are refused."""
    if -1 in shards:
        if len(shards) > 1:
            raise _fail(f"{folder} has both {key}.npy and {key}-NNNNN.npy; keep one layout")
        return [shards[-1]]
    numbers = sorted(shards)
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
        raise _fail(
            f"{folder}: {key} shard {missing[0]:05d} is missing; shards are numbered "
            f"from 00000 with no gaps"
        )
    return [shards[n] for n in numbers]


def _load(path: Path) -> np.ndarray:
    """One memory-mapped array of numbers with at least one axis (a row per sample)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise _fail(
            f"{path} cannot be memory-mapped ({e}); save numeric arrays, not object "
            f"dtype (lists of different lengths, strings or Python objects)"
        ) from e
    except OSError as e:
        raise _fail(f"{path} is not a readable .npy file ({e})") from e
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        dtype = getattr(array, "dtype", type(array).__name__)
        raise _fail(f"{path} has dtype {dtype}; arrays must hold numbers (bool, int or float)")
    if array.ndim == 0:
        raise _fail(f"{path} is a scalar; an array needs a first axis with one row per sample")
    return array


def _as_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    """Floats as float32 and integers as int64 in numpy first: torch has no uint16..64
    arithmetic, and a memmap is read-only, which ``torch.from_numpy`` warns about."""
    out = np.asarray(array, dtype=np.float32 if array.dtype.kind == "f" else np.int64)
    if not out.flags.writeable:  # a row of the memmap itself, not a gathered copy
        out = out.copy()
    return normalise(torch.from_numpy(out), what)


class NpySamples:
    """One split: per input, the list of its memory-mapped shards, aligned row for row."""

    block_rows = 1

    def __init__(
        self, folder: Path, arrays: dict[str, list[np.ndarray]], files: dict[str, list[Path]]
    ) -> None:
        self.folder = folder
        self.arrays = arrays
        rows = [int(a.shape[0]) for a in arrays["y"]]
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.readers = {
            key: [ShardRows(path, array) for path, array in zip(files[key], shards, strict=True)]
            for key, shards in arrays.items()
        }

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Pickling a memmap copies the whole array; another process maps the files again.
        return (_reopen, (str(self.folder),))

    def __getitem__(self, index: int) -> Sample:
        ((shard, rows),) = Gather.plan([index], self.starts, f" of {self.folder}").runs
        parts = {
            k: _as_tensor(v[shard].take(rows)[0], f"{self.folder} {k}")
            for k, v in self.readers.items()
        }
        return self._inputs(parts), parts["y"]

    def __getitems__(self, indices: Sequence[int]) -> ReadyBatch:
        """Gathers shard by shard in index order (sequential reads within a file), then puts
        the rows back in the order asked for."""
        gather = Gather.plan(indices, self.starts, f" of {self.folder}")
        parts: dict[str, torch.Tensor] = {}
        for key, readers in self.readers.items():
            pieces = [readers[shard].take(rows) for shard, rows in gather.runs]
            empty = np.zeros(0, dtype=np.int64)
            gathered = np.concatenate(pieces) if pieces else readers[0].take(empty)
            parts[key] = _as_tensor(gathered[gather.back], f"{self.folder} {key}")
        return ReadyBatch(self._inputs(parts), parts["y"])

    @staticmethod
    def _inputs(parts: dict[str, torch.Tensor]) -> Inputs:
        if "x" in parts:
            return parts["x"]
        return {k[2:]: v for k, v in parts.items() if k.startswith("x.")}


def _check_rows(arrays: dict[str, list[np.ndarray]], files: dict[str, list[Path]]) -> None:
    """Every input has as many shards as y, each with y's row count and one row shape."""
    y_files = files["y"]
    for key, shards in arrays.items():
        if len(shards) != len(y_files):
            raise _fail(
                f"{len(files[key])} shard(s) of {key} but "
                f"{len(y_files)} of y in {y_files[0].parent}; every input needs one "
                f"shard per y shard"
            )
        for a, path, y, y_path in zip(shards, files[key], arrays["y"], y_files, strict=True):
            if a.shape[0] != y.shape[0]:
                raise _fail(
                    f"{path.name} has {a.shape[0]} rows but {y_path.name} has "
                    f"{y.shape[0]} in {path.parent}; shards of x and y must match "
                    f"row for row"
                )
            if a.shape[1:] != shards[0].shape[1:]:
                raise _fail(
                    f"{path} has rows of shape {a.shape[1:]} but {files[key][0].name} "
                    f"has {shards[0].shape[1:]}; every shard needs the same row shape"
                )


def _reopen(folder: str) -> NpySamples:
    return _open_folder(Path(folder))


def _open_folder(folder: Path) -> NpySamples:
    if not folder.is_dir():
        # No folder at all: the data may be where only the workers see it (DataNotFound).
        error = DataNotFound if not folder.parent.exists() else InvalidArgument
        raise error(f"data source 'npy': no folder {folder}; {_expected(folder)}")
    found = _scan(folder)
    if "y" not in found or len(found) < 2:
        raise _fail(f"no x and y arrays in {folder}; {_expected(folder)}")
    if "x" in found and len(found) > 2:
        names = sorted(k[2:] for k in found if k.startswith("x."))
        raise _fail(
            f"{folder} has both x and named inputs {names}; use x-NNNNN.npy for one "
            f"input or x.<name>-NNNNN.npy for each named input, not both"
        )
    bad = [k[2:] for k in found if k.startswith("x.") and not k[2:].isidentifier()]
    if bad:
        raise _fail(
            f"input name {bad[0]!r} in {folder} is not a Python identifier (it becomes "
            f"a keyword argument of the model's forward)"
        )
    files = {k: _ordered(k, v, folder) for k, v in found.items()}
    arrays = {k: [_load(p) for p in paths] for k, paths in files.items()}
    _check_rows(arrays, files)
    return NpySamples(folder, arrays, files)


class NpySource:
    """``data: {source: npy, path: <folder>}``: ``<folder>/train`` and ``<folder>/test``."""

    kind: ClassVar[str] = "npy"
    seeds_samples: ClassVar[bool] = False

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.path = Path(args_path(args, self.kind))

    def open(self, split: str) -> NpySamples:
        if split not in SPLITS:
            raise _fail(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return _open_folder(self.path / split)
