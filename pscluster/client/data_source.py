"""``Client.submit(data=...)``: a job whose workers read the data where it lives.

``data`` is the user's function (a function, or "path/to/file.py:make_dataset") called on
every worker as ``make_dataset(split, **data_args)``, or a built-in reader ("npy",
"parquet") with ``data_args={"path": ...}``. Nothing is uploaded but the code.

Errors at the door: the source is opened here too, through the code exactly as it will be
shipped, and a few samples of each split run through the dry run. A source whose files only
the workers can see (a volume mounted on them) cannot be read here: that is said in the log,
and the workers' first reading of it fails the job fast if it is wrong.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pscluster.client.code_refs import is_file_ref, load_ref
from pscluster.client.errors import InvalidJobError
from pscluster.data import sources
from pscluster.data.dataset import Dataset
from pscluster.data.sources.base import DataNotFound, Sample, SampleSet, block_rows
from pscluster.errors import PSError
from pscluster.model import rebuild
from pscluster.model.bundle import shipped_ref
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)

DataArg = str | Callable[..., Any]
SAMPLE_ROWS = 8
# What a source raises when its files are not on this machine (only the workers see them).
_ABSENT = (FileNotFoundError, NotADirectoryError)


@dataclass(frozen=True)
class ChosenSource:
    kind: str
    function: Callable[..., Any] | None  # the user's, shipped with the model's code
    args: dict[str, Any]
    loader_workers: int
    prefetch_batches: int

    def to_proto(self) -> co_pb2.DataSpec:
        return co_pb2.DataSpec(
            source=self.kind,
            function=shipped_ref(self.function) if self.function else "",
            args_json=json.dumps(self.args),
            loader_workers=self.loader_workers,
            prefetch_batches=self.prefetch_batches,
        )


def choose(
    data: DataArg,
    data_args: Mapping[str, Any] | None,
    loader_workers: int,
    prefetch_batches: int,
) -> ChosenSource:
    """The source ``data`` names; InvalidJobError saying what is wrong with it."""
    args = _json_args(data_args)
    for name, value in (("loader_workers", loader_workers), ("prefetch_batches", prefetch_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
            raise InvalidJobError(f"{name} must be an integer from 0 to 64, got {value!r}")
    if isinstance(data, str) and data in sources.BUILTIN:
        path = args.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidJobError(f"data={data!r} needs data_args={{'path': <folder>}}")
        if Path(path).expanduser().exists():  # here too (local mode): the workers' cwd differs
            args["path"] = str(Path(path).expanduser().resolve())
        return ChosenSource(data, None, args, loader_workers, prefetch_batches)
    if isinstance(data, str):
        if not is_file_ref(data):
            raise InvalidJobError(
                f"data={data!r} is neither a built-in source {list(sources.BUILTIN)} nor "
                "'path/to/file.py:function'"
            )
        data = _function(load_ref(data, Path.cwd(), "data"), data)
    elif not callable(data):
        raise InvalidJobError(
            f"data must be a function, 'path/to/file.py:function' or one of "
            f"{list(sources.BUILTIN)}, got {type(data).__name__}"
        )
    return ChosenSource(
        sources.FUNCTION, _function(data, data), args, loader_workers, prefetch_batches
    )


def _function(fn: object, named: object) -> Callable[..., Any]:
    if not callable(fn) or isinstance(fn, type):
        raise InvalidJobError(f"data {named!r} is not a function make_dataset(split, **args)")
    qualname = getattr(fn, "__qualname__", "")
    if qualname != getattr(fn, "__name__", None) or qualname == "<lambda>":
        raise InvalidJobError(
            f"the data function {qualname} is nested or a lambda; define it with def at the top "
            "level of a .py file so that workers can import it"
        )
    return fn


def _json_args(data_args: Mapping[str, Any] | None) -> dict[str, Any]:
    if data_args is None:
        return {}
    if not isinstance(data_args, Mapping):
        raise InvalidJobError(f"data_args must be a dict, got {type(data_args).__name__}")
    try:
        return dict(json.loads(json.dumps(dict(data_args))))
    except (TypeError, ValueError) as e:
        raise InvalidJobError(f"data_args must be JSON-serialisable: {e}") from e


def sample_here(spec: co_pb2.JobSpec) -> Dataset | None:
    """A few samples of each split, read here through the code as shipped, for the dry
    run; None when the source's files are not on this machine."""
    try:
        code = rebuild.load_code(spec.model)
        source = sources.open_source(spec.data, code.lookup)
        opened = {split: source.open(split) for split in sources.SPLITS}
        _check_partitions(spec.partitions, opened["train"])
        splits = [_rows(samples, split) for split, samples in opened.items()]
    except PSError as e:
        if _absent(e):
            log.warning("the data are not readable here (%s); the workers will read them", e)
            return None
        raise InvalidJobError(f"the data source does not open: {e}") from e
    except _ABSENT as e:
        log.warning("the data are not readable here (%s); the workers will read them", e)
        return None
    try:
        return Dataset.from_arrays(splits[0], splits[1])
    except PSError as e:
        raise InvalidJobError(f"the data source's samples: {e}") from e


def _check_partitions(partitions: int, train: SampleSet) -> None:
    """Each partition is cut from whole blocks of rows (a Parquet row group): no more
    partitions than blocks."""
    block = block_rows(train)
    blocks = -(-len(train) // block)
    if partitions > blocks:
        raise InvalidJobError(
            f"partitions={partitions} but the train split has {len(train)} rows in {blocks} "
            f"block(s) of {block} (rows read together); pass partitions <= {blocks}"
            + (" or write smaller row groups" if block > 1 else "")
        )


def _absent(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (DataNotFound, *_ABSENT)):
            return True
        seen = seen.__cause__
    return False


def _rows(samples: SampleSet, split: str) -> tuple[Any, Any]:
    """The first and last samples of a split, stacked as the workers' loader stacks them."""
    n = len(samples)
    if n == 0:
        raise InvalidJobError(f"the data source's {split} split is empty")
    picked = sorted({*range(min(n, SAMPLE_ROWS)), n - 1})
    try:
        read: list[Sample] = [samples[i] for i in picked]
        x, y = sources.collate(read, f"the {split} split")
    except PSError:
        raise
    except Exception as e:
        raise InvalidJobError(
            f"reading samples {picked} of the {split} split failed: {type(e).__name__}: {e}"
        ) from e
    return x, y
