"""Data sources: where a job's workers read their samples (see :mod:`.base`).

:func:`open_source` turns a job's spec into its source; each kind is one module here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pscluster.data.sources.arrays import UploadedSource
from pscluster.data.sources.base import SPLITS, DataSource, ReadyBatch, SampleSet, collate
from pscluster.data.sources.function import DataSourceError, FunctionSource
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2


def _npy(args: Mapping[str, Any]) -> DataSource:
    from pscluster.data.sources.npy import NpySource

    return NpySource(args)


def _parquet(args: Mapping[str, Any]) -> DataSource:
    # pyarrow is imported only where Parquet is read, not by the coordinator or the SDK.
    from pscluster.data.sources.parquet import ParquetSource

    return ParquetSource(args)


# The built-in readers, by the name a job gives as its data.source.
BUILTIN: dict[str, Callable[[Mapping[str, Any]], DataSource]] = {"npy": _npy, "parquet": _parquet}
FUNCTION = FunctionSource.kind
KINDS = (FUNCTION, *BUILTIN)


def source_args(data: co_pb2.DataSpec) -> dict[str, Any]:
    try:
        args = json.loads(data.args_json or "{}")
    except ValueError as e:
        raise InvalidArgument(f"data args are not valid JSON: {e}") from e
    if not isinstance(args, dict):
        raise InvalidArgument(f"data args must be a JSON object, got {type(args).__name__}")
    return args


def check_spec(data: co_pb2.DataSpec) -> None:
    """What the coordinator can check of a job's data source without reading it."""
    if data.source not in KINDS:
        raise InvalidArgument(f"data source {data.source!r} is unknown; expected one of {KINDS}")
    if (data.source == FUNCTION) != bool(data.function):
        raise InvalidArgument(
            "data.function names the function of a 'function' source, and only of one"
        )
    source_args(data)


def open_source(data: co_pb2.DataSpec, lookup: Callable[[str], object]) -> DataSource:
    """The job's source; ``lookup`` finds "module:name" in the job's shipped code."""
    check_spec(data)
    args = source_args(data)
    if data.source == FUNCTION:
        fn = lookup(data.function)
        if not callable(fn):
            raise InvalidArgument(f"data function {data.function!r} is not a function")
        return FunctionSource(fn, data.function, args)
    return BUILTIN[data.source](args)


__all__ = [
    "BUILTIN",
    "FUNCTION",
    "KINDS",
    "SPLITS",
    "DataSource",
    "DataSourceError",
    "ReadyBatch",
    "SampleSet",
    "UploadedSource",
    "check_spec",
    "collate",
    "open_source",
    "source_args",
]
