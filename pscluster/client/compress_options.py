"""What ``Client.compress`` and ``Job.compress`` take, and what they give back.

The options are checked here, before any RPC: the request itself (an unknown quantization,
a prune amount outside [0, 1), ...) by :class:`~pscluster.model_compression.Request`, the
fine-tune's overrides by name. Every mistake is an :class:`InvalidJobError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pscluster.client.errors import InvalidJobError
from pscluster.model_compression import CompressionReport, Request
from pscluster.model_compression.prune import Masks

if TYPE_CHECKING:
    from pscluster.client.job import Job

# What ``finetune=`` may change about the fine-tune job; the rest is the trained job's (or,
# for a local model, Client.submit's defaults).
FINETUNE_KEYS = (
    "mode",
    "staleness",
    "optimizer",
    "batch_size",
    "local_steps",
    "backup_workers",
    "seed",
    "name",
)


@dataclass(frozen=True, kw_only=True)
class CompressOptions:
    """``quantize`` "int8" | "fp16" | "bf16"; ``prune`` an amount in [0, 1) or
    ``{"amount": 0.5, "structured": False}``; ``finetune_epochs`` of training on the cluster
    after pruning, with the pruned weights held at zero on the shards, by default with the
    job's optimizer at a tenth of its learning rate; ``finetune`` changes that job
    (:data:`FINETUNE_KEYS`, e.g. ``{"mode": "sync", "optimizer": {...}}``).

    ``test`` = (X, y) scores every variant (default: the job's own uploaded test set);
    ``output`` (".safetensors" or ".pt") receives the last variant; ``report`` the table as
    JSON. Latency is the median of ``repeats`` calls on the first ``batch_rows`` test rows
    with ``threads`` threads. ``progress`` shows the fine-tune's progress bar; ``timeout``
    bounds its wait (seconds).

    A model that is not a job's: ``model`` (an nn.Module class, shipped as ``submit`` ships
    one) with ``state`` (its state_dict), ``model_kwargs``, ``code_dir``, ``loss`` and
    ``metric``, and ``train`` = (X, y) for the fine-tune.
    """

    quantize: str | None = None
    prune: float | Mapping[str, Any] | None = None
    finetune_epochs: int = 0
    finetune: Mapping[str, Any] | None = None
    test: tuple[Any, Any] | None = None
    output: str | Path | None = None
    report: str | Path | None = None
    batch_rows: int = 256
    threads: int = 1
    repeats: int = 50
    progress: bool = False
    timeout: float = 3600.0
    model: type[nn.Module] | None = None
    state: Mapping[str, torch.Tensor] | None = None
    model_kwargs: Mapping[str, Any] | None = None
    code_dir: str | Path | None = None
    loss: str = "cross_entropy"
    metric: str = ""
    train: tuple[Any, Any] | None = None

    def request(self) -> Request:
        """The compression asked for, checked (InvalidJobError naming what is wrong)."""
        try:
            request = Request.parse(
                quantize=self.quantize,
                prune=dict(self.prune) if isinstance(self.prune, Mapping) else self.prune,
                finetune_epochs=self.finetune_epochs,
                batch_rows=self.batch_rows,
                threads=self.threads,
                repeats=self.repeats,
            )
        except ValueError as e:
            raise InvalidJobError(str(e)) from e
        unknown = sorted(set(self.finetune or {}) - set(FINETUNE_KEYS))
        if unknown:
            raise InvalidJobError(
                f"finetune= sets {unknown}; it takes {list(FINETUNE_KEYS)} (the epochs are "
                "finetune_epochs)"
            )
        if self.finetune and not self.finetune_epochs:
            raise InvalidJobError("finetune= describes the fine-tune: set finetune_epochs too")
        if isinstance(self.timeout, bool) or not self.timeout > 0:
            raise InvalidJobError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        return request

    @property
    def output_path(self) -> Path | None:
        return None if self.output is None else Path(self.output)


@dataclass(frozen=True)
class Compressed:
    """A compression's outcome: the table, the compressed model (the last variant), where
    it was written, the fine-tune job (None without one) and what pruning removed (masks
    over the original's parameters, True: pruned)."""

    report: CompressionReport
    model: nn.Module
    path: Path | None
    finetune_job: Job | None
    masks: Masks
