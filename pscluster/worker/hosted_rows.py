"""The rows a model's hosted tables look up, from the shards that own them, on the worker."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pscluster.config import Settings
from pscluster.worker.runtime import JobRuntime

Call = Callable[[Callable[[], torch.Tensor], str], torch.Tensor]


class ShardRows:
    """What :func:`pscluster.model.hosted.attach_rows` asks rows of: each lookup goes through
    ``call`` (the trainer's, with its retries and its lease check)."""

    def __init__(self, rt: JobRuntime, settings: Settings, call: Call) -> None:
        self._rt = rt
        self._timeout = settings.rpc_timeout_seconds
        self._call = call
        self._dims = [t.dim for t in rt.spec.model.tables]

    def lookup(self, table: int, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        rt, timeout = self._rt, self._timeout
        dim, dtype = self._dims[table], rt.pull_dtype  # half precision rows if pulls are
        return self._call(
            lambda: rt.shards.lookup(
                table, ids, dim, timeout, dtype, rt.row_partitioners[table], peek=peek
            ),
            "lookup",
        )
