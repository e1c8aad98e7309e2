"""The keyword options of ``Client.submit``: their one home, with their defaults and meaning.

``Client.submit`` spells the same keywords out in its signature for the people (and editors)
who read it; :func:`check_mirrored_by` runs when :mod:`pscluster.client.sdk` is imported and
fails unless the two agree name for name and default for default, so the signature cannot
drift from the options the payload is built from. ``submit`` then gathers its arguments into
a :class:`SubmitOptions` by name, and :mod:`pscluster.client.payload` reads them only from
there: a new option is a field here and a keyword there, nothing else.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LossArg = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """How a job trains: everything ``Client.submit`` takes besides the model class, the data
    and ``init_from`` (which is resolved against the cluster before the payload is built).

    ``model_kwargs`` are the arguments of ``model(**model_kwargs)`` (JSON-serialisable);
    ``code_dir`` ships every .py under it instead of the model's file and its local imports.
    ``loss`` is "cross_entropy", "mse", "l1", "bce_with_logits" or a function
    ``loss(output, y) -> scalar`` defined at the top level of your file; ``metric``
    ("accuracy", "mse", "mae", "loss"; default: the loss's own) is what each epoch's
    evaluation reports. ``precision`` "bf16" trains in bfloat16 autocast (CPU and GPU),
    "fp16" in float16 with dynamic loss scaling (CUDA workers); the shards keep float32
    weights. ``seed`` fixes the initial parameters; ``name`` is shown by ``pscluster jobs``.

    ``mode`` is "async", "sync" or "ssp" (bounded by ``staleness``), or "auto": the
    coordinator chooses among sync (with backup workers) and ssp bounds from the workers'
    measured speeds and the loss, and revises it as the job runs, each change an event with
    its reason (``job.metrics().events``); ``staleness`` and ``backup_workers`` are then its
    own to choose and may not be given. ``optimizer`` is a dict
    of torch.optim fields, by default ``{"name": "sgd", "lr": 0.05, "momentum": 0.9}``.
    ``partitions`` and ``shards`` of 0 let the coordinator choose. ``compression``
    compresses the gradients workers push, e.g. ``{"name": "topk", "ratio": 0.01}``
    (codecs: none, fp16, bf16, int8, topk, dgc; dgc also takes momentum, clip_norm and
    warmup_epochs) and may set ``pull_dtype`` ("float16", "bfloat16") for training pulls.

    Stragglers: ``backup_workers`` (sync only) closes each step without the last that
    many pushes (Chen et al. 2016). ``stragglers`` tunes detection and mitigation, e.g.
    ``{"factor": 2.0, "alpha": 0.2, "grace_seconds": 5, "no_mitigation": False}``: a
    worker whose busy time per batch exceeds ``factor`` x the median of the others is
    flagged, gets smaller leases, has its lease split when others are idle and, in ssp,
    stops holding back the slowest clock after ``grace_seconds``.
    ``staleness_aware_lr`` divides each async/ssp push by (staleness + 1).

    ``local_steps`` (local SGD, as Downpour SGD's n_fetch = n_push): each worker takes
    that many steps of the job's ``optimizer`` on its own copy of the parameters (keeping
    its momentum or Adam state), then pushes the window's change and pulls again; the
    shards add the change (sync: averaged over the workers). 1/``local_steps`` of the
    communication per sample, at the price of workers seeing each other's progress once
    per window. Use it with ``mode="sync"``, or lower ``lr`` in async, where every
    worker's whole change is added. 0 or 1: pull and push every step.

    Sparse tables: every ``nn.Embedding``/``nn.EmbeddingBag`` built with ``sparse=True``
    lives on the shards, split row-wise by id, and is never allocated on a worker; a batch
    pulls and pushes only the rows it touches. ``sparse_optimizer`` (required then) steps
    those rows, e.g. ``{"name": "adagrad", "lr": 0.05}`` (sgd, adagrad, rowwise_adagrad,
    lazy_adam: torch's SGD, Adagrad and SparseAdam on sparse gradients; rowwise_adagrad keeps
    one accumulator per row). ``optimizer`` steps the dense parameters.

    A job reading a data source (``data=``; see :mod:`pscluster.client.data_source`)
    passes ``data_args`` to it, and each worker reads its samples in ``loader_workers``
    DataLoader processes (0: in the training process), ``prefetch_batches`` ahead.

    Values are checked when the payload is built (InvalidJobError naming the option), and
    names and ranges that need the cluster's knowledge by the coordinator.

    Example::

        options = SubmitOptions(mode="ssp", staleness=2, optimizer={"name": "adam", "lr": 1e-3})
    """

    mode: str = "async"
    staleness: int = 0
    optimizer: Mapping[str, Any] | None = None
    sparse_optimizer: Mapping[str, Any] | None = None
    epochs: int = 10
    batch_size: int = 64
    model_kwargs: Mapping[str, Any] | None = None
    loss: LossArg = "cross_entropy"
    partitions: int = 0
    shards: int = 0
    seed: int = 0
    name: str = ""
    compression: Mapping[str, Any] | None = None
    backup_workers: int = 0
    stragglers: Mapping[str, Any] | None = None
    staleness_aware_lr: bool = False
    local_steps: int = 0
    metric: str = ""
    precision: str = "fp32"
    code_dir: str | Path | None = None
    data_args: Mapping[str, Any] | None = None
    loader_workers: int = 1
    prefetch_batches: int = 2

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> SubmitOptions:
        """The options among a call's arguments (``locals()`` of ``Client.submit``), by name."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})


def check_mirrored_by(function: Callable[..., Any], *, besides: Collection[str] = ()) -> None:
    """Fail unless ``function``'s keyword-only parameters, less ``besides``, are exactly the
    fields of :class:`SubmitOptions` with the same defaults.

    Raises TypeError naming the keywords that differ: a programming error, found on import.
    """
    signature = inspect.signature(function).parameters.values()
    keywords = {
        p.name: p.default for p in signature if p.kind is p.KEYWORD_ONLY and p.name not in besides
    }
    fields = {f.name: f.default for f in dataclasses.fields(SubmitOptions)}
    missing = object()
    differ = sorted(
        name
        for name in keywords.keys() | fields.keys()
        if keywords.get(name, missing) != fields.get(name, missing)
    )
    if differ:
        raise TypeError(
            f"the keyword options of {function.__qualname__} and the fields of SubmitOptions "
            f"differ in {differ}; give each option the same name and default in both"
        )
