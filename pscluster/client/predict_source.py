"""``Client.predict(data="npy", data_args={"path": ...})``: scoring the rows of a source that
the workers read where it lives, nothing uploaded.

The partitions are row ranges over the source's row count, and that count is learned here:
the source is opened on this machine (local mode, or a path mounted here as on the workers),
its rows counted, and its first and last rows read for the dry run. A training job can learn
its sizes from the first worker because its partitions are cut later; a predict job's
partitions are fixed at submission, so a source this machine cannot read is refused at the
call rather than guessed. Only the built-in readers are offered: a data function would have
to be shipped with a model that may be a completed job's, whose code is already fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from pscluster.client.data_source import SAMPLE_ROWS, choose
from pscluster.client.errors import InvalidJobError
from pscluster.data import sources
from pscluster.data.inputs import Inputs
from pscluster.data.sources.base import DataNotFound, SampleSet
from pscluster.errors import PSError
from pscluster.v1 import coordinator_pb2 as co_pb2

_ABSENT = (FileNotFoundError, NotADirectoryError, DataNotFound)


@dataclass(frozen=True)
class SourceRows:
    """A source as a predict job names it, its row count, and a few of its rows' inputs."""

    data: co_pb2.DataSpec
    split: str
    rows: int
    sample: Inputs


def is_source(data: object) -> TypeGuard[str]:
    """A string names a source; arrays, tensors and their tuples or dicts are uploaded."""
    return isinstance(data, str)


def read(data: str, data_args: Mapping[str, Any] | None, split: str) -> SourceRows:
    """The source ``data`` names, opened and counted here; InvalidJobError saying what is
    wrong (an unknown reader, a missing path, a split that is not there, no rows)."""
    if data not in sources.BUILTIN:
        raise InvalidJobError(
            f"data={data!r}: predict reads a worker-side source through a built-in reader "
            f"{list(sources.BUILTIN)} (with data_args={{'path': ...}}); pass arrays to upload"
        )
    if split not in sources.SPLITS:
        raise InvalidJobError(f"split {split!r} is not a split; expected one of {sources.SPLITS}")
    chosen = choose(data, data_args, 0, 0)
    try:
        samples = sources.BUILTIN[data](chosen.args).open(split)
        n = len(samples)
        sample = _inputs(samples, n)
    except _ABSENT as e:
        raise InvalidJobError(
            f"the {data} source is not readable here ({e}); predict counts the source's rows "
            "on this machine to cut its partitions: run it where the data are mounted"
        ) from e
    except PSError as e:
        raise InvalidJobError(f"the {data} source's {split} split: {e}") from e
    return SourceRows(chosen.to_proto(), split, n, sample)


def _inputs(samples: SampleSet, n: int) -> Inputs:
    """The inputs of the split's first rows and its last, stacked as a worker stacks them."""
    if n == 0:
        raise InvalidJobError("the source's split has no rows; pass at least one row to score")
    picked = sorted({*range(min(n, SAMPLE_ROWS)), n - 1})
    x, _ = sources.collate([samples[i] for i in picked], "the rows to score")
    return x
