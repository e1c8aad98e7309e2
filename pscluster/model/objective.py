"""What a job optimises and what its evaluation reports: losses, metrics, and their targets.

One home for both sides of a job: the SDK checks a submission's targets against the model's
output with these rules, and workers train and evaluate with the same functions, so a job that
passes the check at submit is one no worker refuses later.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from pscluster.errors import InvalidArgument
from pscluster.model import auc
from pscluster.model.names import BUILTIN_LOSSES as BUILTIN_LOSSES
from pscluster.model.names import CUSTOM as CUSTOM
from pscluster.model.names import LOSSES as LOSSES
from pscluster.model.names import LOWER_IS_BETTER as LOWER_IS_BETTER
from pscluster.model.names import METRICS as METRICS

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_DEFAULT_METRIC = {
    "cross_entropy": "accuracy",
    "bce_with_logits": "accuracy",
    "mse": "mse",
    "l1": "mse",
    CUSTOM: "loss",
}
CLASSIFICATION = ("cross_entropy", "bce_with_logits")


def loss_name(loss: str) -> str:
    return loss or "cross_entropy"


def metric_of(loss: str, metric: str) -> str:
    """The metric in force: the one asked for, else the loss's own."""
    return metric or _DEFAULT_METRIC[loss_name(loss)]


def check_objective(loss: str, metric: str, loss_function: str) -> None:
    """InvalidArgument unless the loss, its function reference and the metric go together."""
    name = loss_name(loss)
    if name not in LOSSES:
        raise InvalidArgument(
            f"loss {loss!r} is unknown; expected one of {list(BUILTIN_LOSSES)} or a function "
            "of your own (pass the function itself)"
        )
    if name == CUSTOM and ":" not in loss_function:
        raise InvalidArgument(
            "a custom loss needs loss_function 'module:function' naming it in the shipped code"
        )
    if name != CUSTOM and loss_function:
        raise InvalidArgument(f"loss_function is set but loss is {name!r}; use loss 'custom'")
    if metric and metric not in METRICS:
        raise InvalidArgument(f"metric {metric!r} is unknown; expected one of {list(METRICS)}")
    if metric == "accuracy" and name in ("mse", "l1"):
        raise InvalidArgument(f"metric 'accuracy' needs class outputs; loss {name!r} regresses")
    if metric == "auc" and name != "bce_with_logits":
        raise InvalidArgument(f"metric 'auc' ranks bce_with_logits scores; the loss is {name!r}")


def builtin_loss(name: str) -> LossFn:
    """The loss of a built-in name; regression targets take the output's shape and dtype."""
    name = loss_name(name)
    if name == "cross_entropy":
        return _cross_entropy
    if name == "mse":
        return lambda out, y: F.mse_loss(out, _like(y, out))
    if name == "l1":
        return lambda out, y: F.l1_loss(out, _like(y, out))
    if name == "bce_with_logits":
        return lambda out, y: F.binary_cross_entropy_with_logits(out, _like(y, out))
    raise InvalidArgument(f"loss {name!r} is not built in; expected one of {BUILTIN_LOSSES}")


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.is_floating_point():  # class probabilities, shaped as the output
        return F.cross_entropy(out, y.to(out.dtype))
    return F.cross_entropy(out, y)


def _like(y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A target shaped and typed as the output ((N,) against (N, 1) is the usual mismatch)."""
    return y.to(out.dtype).reshape(out.shape)


class Evaluation:
    """Sums over a test set's batches; ``result()`` is the mean of each measure."""

    def __init__(self, loss: str, metric: str, loss_fn: LossFn) -> None:
        self.loss = loss_name(loss)
        self.metric = metric_of(loss, metric)
        self.loss_fn = loss_fn
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._scores: list[torch.Tensor] = []  # auc: every score and label of the test set
        self._labels: list[torch.Tensor] = []

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        rows = int(y.shape[0])
        self._add("loss", float(self.loss_fn(out, y)) * rows, rows)
        if self.metric == "accuracy":
            correct, total = _correct(self.loss, out, y)
            self._add("accuracy", correct, total)
        elif self.metric == "auc":
            self._scores.append(out.detach().float().reshape(-1).cpu())
            self._labels.append(_like(y, out).float().reshape(-1).cpu())
        elif self.metric in ("mse", "mae"):
            diff = out.float() - _like(y, out).float()
            self._add("mse", float(diff.pow(2).sum()), diff.numel())
            self._add("mae", float(diff.abs().sum()), diff.numel())

    def _add(self, key: str, value: float, count: int) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value
        self._counts[key] = self._counts.get(key, 0) + count

    def result(self) -> dict[str, float]:
        out = {k: self._sums[k] / max(1, self._counts[k]) for k in self._sums}
        if self._scores:
            out["auc"] = rank_auc(torch.cat(self._labels), torch.cat(self._scores))
        return out


def rank_auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """ROC AUC by ranks (:mod:`pscluster.model.auc`); 0.5 when one class is missing, where
    it is undefined."""
    positives = int((labels > 0.5).sum())
    if positives in (0, labels.numel()):
        return 0.5
    return auc.rank_auc(labels.detach().cpu().numpy(), scores.detach().double().cpu().numpy())


def _correct(loss: str, out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Correct predictions and predictions made: argmax over classes (dim 1), or the sign of
    each logit against a 0/1 target for bce_with_logits."""
    if loss == "bce_with_logits":
        hits = (out > 0) == (_like(y, out) > 0.5)
        return int(hits.sum()), hits.numel()
    target = y.argmax(dim=1) if y.is_floating_point() else y
    hits = out.argmax(dim=1) == target
    return int(hits.sum()), hits.numel()


def check_targets(loss: str, out: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """InvalidArgument unless targets ``y`` fit the output ``out`` of the same rows."""
    name = loss_name(loss)
    if name == "cross_entropy":
        _check_classes(out, y, what)
    elif name in ("mse", "l1", "bce_with_logits"):
        if not y.is_floating_point():
            raise InvalidArgument(f"{what} is {y.dtype}; loss {name!r} needs floating targets")
        if out[0].numel() != y[0].numel():
            raise InvalidArgument(
                f"{what} has {y[0].numel()} value(s) per row but the model outputs "
                f"{out[0].numel()} (shape {tuple(out.shape[1:])}); loss {name!r} compares them "
                "one to one"
            )


def _check_classes(out: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if out.ndim < 2:
        raise InvalidArgument(
            f"the model outputs shape {tuple(out.shape)}; cross_entropy needs (rows, classes)"
        )
    if y.is_floating_point():
        if tuple(y.shape) != tuple(out.shape):
            raise InvalidArgument(
                f"{what} holds class probabilities of shape {tuple(y.shape)} but the model "
                f"outputs {tuple(out.shape)}; pass int64 class labels or matching probabilities"
            )
        return
    expected = (out.shape[0], *out.shape[2:])
    if tuple(y.shape) != tuple(expected):
        raise InvalidArgument(
            f"{what} has shape {tuple(y.shape)} but the model outputs {tuple(out.shape)}; "
            f"cross_entropy needs int64 labels of shape {tuple(expected)}"
        )


def check_labels(y: torch.Tensor, classes: int, what: str) -> None:
    """Every integer class label of a whole split within 0..classes-1."""
    if y.is_floating_point() or y.numel() == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        bad = torch.unique(torch.nonzero((y < 0) | (y >= classes))[:, 0])
        raise InvalidArgument(
            f"{what} has labels from {low} to {high} but the model outputs {classes} classes "
            f"(labels 0..{classes - 1}); rows {_rows(bad)}"
        )


def check_binary(y: torch.Tensor, what: str) -> None:
    """bce_with_logits targets are probabilities in [0, 1]."""
    if y.numel() and (float(y.min()) < 0 or float(y.max()) > 1):
        bad = torch.nonzero(((y < 0) | (y > 1)).reshape(y.shape[0], -1).any(dim=1))[:, 0]
        raise InvalidArgument(
            f"{what} has values outside [0, 1]; bce_with_logits needs probabilities "
            f"(rows {_rows(bad)})"
        )


def finite_result(result: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in result.values())


def _rows(indices: torch.Tensor, shown: int = 8) -> str:
    rows = [int(i) for i in indices[:shown]]
    more = indices.numel() - len(rows)
    return f"{rows}" + (f" and {more} more" if more > 0 else "")


def nonfinite_rows(t: torch.Tensor) -> torch.Tensor:
    """Indices of the rows of ``t`` that hold a NaN or an infinity."""
    if not t.is_floating_point() or t.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    return torch.nonzero(bad)[:, 0]


def describe_rows(indices: torch.Tensor) -> str:
    return _rows(indices)
