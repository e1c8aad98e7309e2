"""Parquet files as a source, read a row group at a time.

A split is ``<path>/<split>/*.parquet`` (files in name order, concatenated) or one
``<path>/<split>.parquet``; sample i is row i of the files' row groups laid end to end. Args:
``y`` names the label column; ``x`` is a column (a list column gives a vector per row, a
number column a vector of one), a list of number columns (stacked into one float vector per
row) or a mapping {input name: column or columns} for named inputs; by default x is every
column but y. ``block_rows`` (default: the first row group's rows) tells the partitioner
which rows are cheap to read together, ``cache_mb`` (default 64) bounds the decoded row
groups each process keeps.

Parquet compresses by row group, so reading one row means decoding its whole group: a batch
decodes each group it touches once (only the columns the job uses), and a small LRU cache
keeps recent groups for the next batches (the partitioner hands a process whole blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pscluster.data.byte_cache import ByteLRU
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
from pscluster.errors import InvalidArgument

_HINT = "(see examples/make_big_digits.py --format parquet)"


def _fail(message: str) -> InvalidArgument:
    return InvalidArgument(f"data source 'parquet': {message}")


def _group(value: object, what: str) -> tuple[str, ...]:
    """One input's columns: a column name or a non-empty list of them."""
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(c, str) for c in value):
        return tuple(value)
    raise _fail(f"args {what} must be a column name or a list of column names, got {value!r}")


@dataclass(frozen=True)
class Columns:
    """Which columns make which tensor: ``x`` by input name ("x" alone when not named)."""

    x: dict[str, tuple[str, ...]]
    y: str
    named: bool

    @classmethod
    def from_args(cls, args: Mapping[str, Any], names: Sequence[str]) -> Columns:
        y = args.get("y")
        if not isinstance(y, str) or not y:
            raise _fail(f"needs args {{'y': <label column>}}; the columns are {list(names)}")
        x = args.get("x")
        if x is None:
            return cls(
                {"x": _group([c for c in names if c != y], "x (every column but y)")}, y, False
            )
        if not isinstance(x, Mapping):
            return cls({"x": _group(x, "x")}, y, False)
        bad = [k for k in x if not (isinstance(k, str) and k.isidentifier())]
        if not x or bad:
            raise _fail(f"args x must map input names (Python identifiers) to columns, got {x!r}")
        return cls({k: _group(v, f"x[{k!r}]") for k, v in x.items()}, y, True)

    def needed(self) -> list[str]:
        cols = [c for group in self.x.values() for c in group]
        return list(dict.fromkeys([*cols, self.y]))


def _numeric(t: Any) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _is_list(t: Any) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _check_types(columns: Columns, schema: Any, path: Path) -> None:
    """Every needed column exists and is a number, or a list of numbers alone in its input."""
    names = list(schema.names)
    groups = {f"x[{k!r}]" if columns.named else "x": g for k, g in columns.x.items()}
    for what, group in {**groups, "y": (columns.y,)}.items():
        for col in group:
            if col not in names:
                raise _fail(f"column {col!r} ({what}) is not in {path}; its columns are {names}")
            t = schema.field(col).type
            if _is_list(t) and _numeric(t.value_type) and len(group) == 1:
                continue
            if _is_list(t) and _numeric(t.value_type):
                raise _fail(
                    f"column {col!r} is a list; a list column must be the only column "
                    f"of {what} (number columns can be stacked, lists cannot)"
                )
            if not _numeric(t):
                raise _fail(
                    f"column {col!r} ({what}) is {t}; columns must hold numbers "
                    f"(int, float, bool) or a list of numbers"
                )


def _values(chunked: Any, col: str) -> np.ndarray:
    """One column of a decoded row group as numpy: (rows,) or (rows, length) for lists."""
    if chunked.null_count:
        raise _fail(f"column {col!r} has null values; fill or drop them")
    arr = chunked.combine_chunks()
    if not _is_list(arr.type):
        return np.asarray(arr.to_numpy(zero_copy_only=False))
    flat = arr.flatten()
    if flat.null_count:
        raise _fail(f"column {col!r} has null values inside its lists; fill or drop them")
    lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False))
    if lengths.size and (lengths != lengths[0]).any():
        raise _fail(
            f"column {col!r} has lists of lengths {lengths.min()}..{lengths.max()}; "
            f"every row's list must have the same length"
        )
    width = int(lengths[0]) if lengths.size else 0
    return np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(len(arr), width)


def _compact(a: np.ndarray) -> np.ndarray:
    """Floats as float32, integers and booleans as int64, as every batch of a job is; always
    a copy, so that the cache holds numpy's memory and not the Arrow buffers behind it."""
    return np.array(a, dtype=np.float32 if a.dtype.kind == "f" else np.int64, copy=True)


def _decode(table: Any, columns: Columns) -> dict[str, np.ndarray]:
    """A row group's tensors as numpy, by "x.<input>" and "y" (an input may be named y)."""
    out: dict[str, np.ndarray] = {}
    for key, group in columns.x.items():
        parts = [_values(table.column(c), c) for c in group]
        if len(parts) == 1 and parts[0].ndim == 2:
            out[f"x.{key}"] = _compact(parts[0])
        else:
            out[f"x.{key}"] = np.stack(parts, axis=1).astype(np.float32)
    out["y"] = _compact(_values(table.column(columns.y), columns.y))
    return out


class ParquetSamples:
    """One split: its non-empty row groups as (file index, group in that file, rows), laid
    end to end; files are opened on first read."""

    def __init__(
        self,
        files: list[Path],
        groups: list[tuple[int, int, int]],
        columns: Columns,
        block_rows: int,
        cache_bytes: int,
    ) -> None:
        self.files, self.columns, self.groups = files, columns, groups
        self.starts = np.concatenate([[0], np.cumsum([g[2] for g in groups])]).astype(np.int64)
        self.block_rows = block_rows
        self._cache: ByteLRU[int, dict[str, np.ndarray]] = ByteLRU(cache_bytes)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def cache_bytes(self) -> int:
        """What the decoded row groups held take."""
        return self._cache.bytes

    def __getstate__(self) -> dict[str, Any]:
        # The decoded groups stay here: another process decodes what it reads itself.
        return {**self.__dict__, "_cache": ByteLRU(self._cache.limit)}

    def _file(self, index: int) -> Any:
        """A reader of the file, opened for one read. A kept reader retains Arrow buffers
        (bench/data.py at 2.2 GB: a loader peaked at 1.1 GB with 33 kept, 501 MB without),
        reading the footer again costs less than a row group, and nothing opened crosses a
        ``fork()``."""
        return pq.ParquetFile(self.files[index])

    def _group(self, g: int) -> dict[str, np.ndarray]:
        """Row group g decoded (its needed columns only), from the LRU cache if it is there;
        a group larger than the whole cache is decoded and not kept."""
        held = self._cache.get(g)
        if held is not None:
            return held
        file_index, rg, _ = self.groups[g]
        table = self._file(file_index).read_row_group(rg, columns=self.columns.needed())
        decoded = _decode(table, self.columns)
        self._cache.put(g, decoded, sum(a.nbytes for a in decoded.values()))
        return decoded

    def _batch(self, parts: dict[str, np.ndarray]) -> tuple[Inputs, torch.Tensor]:
        t = {k: normalise(torch.from_numpy(v), f"parquet {k}") for k, v in parts.items()}
        x: Inputs = {k: t[f"x.{k}"] for k in self.columns.x} if self.columns.named else t["x.x"]
        return x, t["y"]

    def __getitem__(self, index: int) -> Sample:
        ((g, rows),) = Gather.plan([index], self.starts).runs
        return self._batch({k: np.array(a[int(rows[0])]) for k, a in self._group(g).items()})

    def __getitems__(self, indices: Sequence[int]) -> ReadyBatch:
        """Decodes each row group the batch touches once, in file order, then puts the rows
        back in the order asked for."""
        gather = Gather.plan(indices, self.starts)
        pieces: dict[str, list[np.ndarray]] = {f"x.{k}": [] for k in self.columns.x}
        pieces["y"] = []
        for g, rows in gather.runs:
            for key, a in self._group(g).items():
                pieces[key].append(a[rows])
        if not gather.runs:
            pieces = {k: [v[:0]] for k, v in self._group(0).items()}
        x, y = self._batch({k: np.concatenate(v)[gather.back] for k, v in pieces.items()})
        return ReadyBatch(x, y)


def _split_files(root: Path, split: str) -> list[Path]:
    folder, single = root / split, root / f"{split}.parquet"
    if folder.is_dir():
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise _fail(
                f"no .parquet files in {folder}; expected {split}/part-00000.parquet, ... {_HINT}"
            )
        return files
    if single.is_file():
        return [single]
    # No folder at all: the data may be where only the workers see it (DataNotFound).
    error = DataNotFound if not root.exists() else InvalidArgument
    raise error(
        f"data source 'parquet': no folder {folder} and no file {single}; expected "
        f"{split}/part-00000.parquet, ... or {split}.parquet {_HINT}"
    )


def _row_groups(files: list[Path], args: Mapping[str, Any]) -> tuple[Columns, list[Any]]:
    """The columns the args name, checked against every file, and each file's metadata."""
    metas: list[Any] = []
    columns: Columns | None = None
    for path in files:
        try:
            with pq.ParquetFile(path) as pf:
                schema, meta = pf.schema_arrow, pf.metadata
        except (OSError, pa.ArrowException) as e:
            raise _fail(f"{path} is not a readable Parquet file ({e})") from e
        columns = columns or Columns.from_args(args, list(schema.names))
        _check_types(columns, schema, path)
        metas.append(meta)
    assert columns is not None
    return columns, metas


def _positive(args: Mapping[str, Any], key: str) -> float | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(f"args {key} must be a positive number, got {value!r}")
    if key == "block_rows" and not isinstance(value, int):
        raise _fail(f"args block_rows must be an integer >= 1, got {value!r}")
    return value


class ParquetSource:
    """``data: {source: parquet, path: <folder>, x: ..., y: <column>}``."""

    kind: ClassVar[str] = "parquet"
    seeds_samples: ClassVar[bool] = False

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.path = Path(args_path(args, self.kind))
        self.args = dict(args)
        block = _positive(args, "block_rows")
        self.block_rows = None if block is None else int(block)
        self.cache_bytes = int((_positive(args, "cache_mb") or 64) * 2**20)

    def open(self, split: str) -> ParquetSamples:
        if split not in SPLITS:
            raise _fail(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        files = _split_files(self.path, split)
        columns, metas = _row_groups(files, self.args)
        groups = [
            (f, rg, meta.row_group(rg).num_rows)
            for f, meta in enumerate(metas)
            for rg in range(meta.num_row_groups)
            if meta.row_group(rg).num_rows > 0
        ]
        if not groups:
            raise _fail(f"the {split} split in {self.path} has no rows")
        block = self.block_rows or int(groups[0][2])
        return ParquetSamples(files, groups, columns, block, self.cache_bytes)
