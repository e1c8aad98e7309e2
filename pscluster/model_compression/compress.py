"""Compress a model in this process: quantize it, prune it (fine-tuned by a function you
pass, or not at all), measure every variant and write the result.

This is what ``Job.compress`` and ``Client.compress`` do once they have the model and its
test set; they add the fine-tune on the cluster. Without one, a model trained anywhere can be
compressed here.

Example::

    from pscluster.model_compression import compress

    result = compress(net, test=(X_test, y_test), quantize="int8", output="net.int8.pt")
    print(result.report.markdown())
    small = torch.jit.load("net.int8.pt")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pscluster.data import inputs
from pscluster.data.dataset import as_tensor
from pscluster.errors import PSError
from pscluster.model import objective
from pscluster.model_compression import pipeline
from pscluster.model_compression.measure import TestSet
from pscluster.model_compression.pipeline import Finetune, Request, Result
from pscluster.model_compression.prune import PruneSpec


def compress(
    model: nn.Module,
    test: tuple[Any, Any],
    *,
    quantize: str | None = None,
    prune: PruneSpec | float | Mapping[str, object] | None = None,
    finetune_epochs: int = 0,
    finetune: Finetune | None = None,
    loss: str = "cross_entropy",
    metric: str = "",
    output: str | Path | None = None,
    batch_rows: int = 256,
    threads: int = 1,
    repeats: int = 50,
    source: str = "",
) -> Result:
    """Compress ``model`` (left unchanged) and measure it against itself on ``test`` = (X, y).

    ``quantize``: "int8" (dynamic, Linear and LSTM layers), "fp16" or "bf16" (every
    weight). ``prune``: an amount in [0, 1) or ``{"amount": 0.5, "structured": False}``;
    with ``finetune_epochs``, ``finetune(state, held)`` trains the pruned state with the
    zeros of the parameters ``held`` kept at zero and returns ``(state, job_id)``. The table
    times each variant on the first ``batch_rows`` test rows, ``repeats`` times on
    ``threads`` threads. ``output`` (".safetensors" or ".pt") receives the last variant.
    ValueError, before anything runs, for a request that cannot be done.
    """
    request = Request.parse(
        quantize=quantize,
        prune=dict(prune) if isinstance(prune, Mapping) else prune,
        finetune_epochs=finetune_epochs,
        batch_rows=batch_rows,
        threads=threads,
        repeats=repeats,
    )
    test_set = test_set_of(test, loss, metric)
    path = Path(output) if output is not None else None
    prepared = pipeline.prepare(model, request, path)
    return pipeline.run(model, test_set, prepared, finetune, source or type(model).__name__)


def test_set_of(test: tuple[Any, Any], loss: str, metric: str) -> TestSet:
    """(X, y) as the job's test set is held; ValueError for data that is not a pair of rows."""
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise ValueError("test must be a pair (X, y): X an array, a tuple or a dict of them")
    try:
        objective.check_objective(loss, metric, "")
        x = inputs.as_inputs(test[0], "test X", as_tensor)
        y = as_tensor(test[1], "test y")
        rows = inputs.rows(x, "test X")
    except PSError as e:
        raise ValueError(str(e)) from e
    if rows == 0 or y.ndim < 1 or y.shape[0] != rows:
        raise ValueError(f"test X has {rows} rows but test y has {tuple(y.shape)[:1]} rows")
    return TestSet(x, y, loss, metric)


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state_dict (what a fine-tune starts from)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
