"""What a compression table compares: parameters, CPU latency per batch and the test metric.

Latency is the median of ``repeats`` timed calls on the same batch with the same number of
intra-op threads for every variant (after a few untimed calls, which pay for one-time
allocations and kernel selection), in ``eval()`` under ``no_grad``, the variants' calls
interleaved: a median, because on a shared machine single calls are delayed by whatever else
runs, and interleaved, so that such delays fall on every variant alike. The metric is the job's own
(accuracy for a classifier, mse for a regression, ...), computed by the same
:class:`~pscluster.model.objective.Evaluation` the workers evaluate with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pscluster.data import inputs
from pscluster.data.inputs import Inputs
from pscluster.model import objective

WARMUP_CALLS = 5


@dataclass(frozen=True)
class TestSet:
    """Rows to score and how: the job's loss and metric, and the evaluation batch size."""

    x: Inputs
    y: torch.Tensor
    loss: str = "cross_entropy"
    metric: str = ""
    loss_fn: objective.LossFn | None = None
    # Rows per forward pass when scoring. One value for every variant and every job: dynamic
    # int8 quantizes each call's activations with that call's range, so its outputs depend
    # (slightly) on how the rows are batched, and a user scoring the test set at once must
    # see the figure the table shows (up to this many rows).
    batch_size: int = 1024

    @property
    def metric_name(self) -> str:
        return objective.metric_of(self.loss, self.metric)

    def rows(self) -> int:
        return inputs.rows(self.x, "test X")

    def batch(self, rows: int) -> Inputs:
        """The first ``rows`` rows: the batch every variant is timed on."""
        return inputs.take(self.x, slice(0, min(rows, self.rows())))


def evaluate(model: nn.Module, test: TestSet) -> dict[str, float]:
    """The job's loss and metric of ``model`` on the test set, in eval() under no_grad."""
    loss_fn = test.loss_fn or objective.builtin_loss(test.loss)
    evaluation = objective.Evaluation(test.loss, test.metric, loss_fn)
    model.eval()
    n = test.rows()
    with torch.no_grad():
        for start in range(0, n, test.batch_size):
            rows = slice(start, min(n, start + test.batch_size))
            out = inputs.call(model, inputs.take(test.x, rows)).float()
            evaluation.add(out, test.y[rows])
    return evaluation.result()


def latencies_ms(
    models: Sequence[nn.Module], batch: Inputs, *, threads: int, repeats: int
) -> list[float]:
    """Median milliseconds of ``model(batch)`` for each model, on ``threads`` threads.

    The calls are interleaved (one call of each model per round, the order turned each
    round), so that whatever else the machine does while they are timed falls on every
    model alike rather than on whichever was timed at a busy moment.
    """
    if threads < 1 or repeats < 1:
        raise ValueError(f"threads and repeats must be >= 1, got {threads} and {repeats}")
    times: list[list[float]] = [[] for _ in models]
    with intra_op_threads(threads), torch.no_grad():
        for model in models:
            model.eval()
            for _ in range(WARMUP_CALLS):
                inputs.call(model, batch)
        for r in range(repeats):
            for k in range(len(models)):
                i = (k + r) % len(models)
                start = time.perf_counter()
                inputs.call(models[i], batch)
                times[i].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, of which nonzero) of a float model; frozen ones included, buffers not."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero
