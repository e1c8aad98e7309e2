"""The names of the metrics a job evaluates, and how they are ordered, labelled and printed.

A job evaluates one metric on its test set besides the loss: "accuracy" for a classifier,
"mse" or "mae" for a regression, or only "loss" for a custom loss. Tables, plots, progress
bars and targets all need to know which way each one improves and how to show it; they ask
here, so that "acc 0.953" and "mse 0.0312" read the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ACCURACY = "accuracy"
LOSS = "loss"
# The order metrics are listed in (columns, CSV headers): the job's own comes first anyway.
KNOWN_METRICS = (ACCURACY, "auc", "mse", "mae", LOSS)
# Accuracy rises as a job learns; mse, mae and the loss fall. A plot or a target needs to know.
HIGHER_IS_BETTER = frozenset({ACCURACY, "auc"})


def metric_label(metric: str) -> str:
    """How a metric is named where space is short: "acc 0.953", "mse 0.0312", "test loss 0.2"."""
    if metric == ACCURACY:
        return "acc"
    return "test loss" if metric == LOSS else metric


def format_metric(metric: str, value: float, digits: int = 4) -> str:
    """Accuracy with fixed decimals (it is 0..1); errors and losses with significant digits,
    since an mse may be 1234.5 or 0.00031."""
    if metric == ACCURACY:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}g}"


def ordered_metrics(names: Iterable[str], first: str | None = None) -> list[str]:
    """``names`` without repeats: ``first`` (the job's metric), the known ones in their order,
    any other alphabetically, the loss last."""
    rank = {m: i for i, m in enumerate(KNOWN_METRICS)}
    return sorted(set(names), key=lambda m: (m != first, m == LOSS, rank.get(m, len(rank)), m))


def infer_metric(metrics: Mapping[str, float]) -> str:
    """The job's metric among what one evaluation measured, when nothing else says it: the
    first known one other than the loss (the coordinator sends only the job's), else "loss"."""
    return next((m for m in KNOWN_METRICS if m in metrics), LOSS)
