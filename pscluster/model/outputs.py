"""What a predict job returns for each row: the model's logits, probabilities or the class.

One rule for both sides: the SDK checks the kind asked for against the model before anything
is sent (a regression model has no probabilities), and each worker turns a batch's output
into what is returned with the same function, so what the dry run promised is what comes
back. Which squashing "probs" means follows the loss the model was trained with when it is
known (``bce_with_logits``: a sigmoid per output, ``cross_entropy``: a softmax over dim 1);
for an uploaded model (no loss) the output's shape decides: one column is a binary logit.
"""

from __future__ import annotations

import torch

from pscluster.errors import InvalidArgument

LOGITS = "logits"
PROBS = "probs"
ARGMAX = "argmax"
OUTPUTS = (LOGITS, PROBS, ARGMAX)
# Losses whose outputs are class logits; any other known loss (mse, l1) is a regression.
_CLASSIFIERS = ("cross_entropy", "bce_with_logits")
_REGRESSIONS = ("mse", "l1")


def check_kind(kind: str, loss: str) -> None:
    """InvalidArgument for an unknown kind, or probabilities of a regression model."""
    if kind not in OUTPUTS:
        raise InvalidArgument(f"output {kind!r} is unknown; expected one of {list(OUTPUTS)}")
    if kind != LOGITS and loss in _REGRESSIONS:
        raise InvalidArgument(
            f"output {kind!r} needs a classifier, but the model was trained with loss "
            f"{loss!r}: its outputs are values, not class logits; use output='logits'"
        )


def check_shape(kind: str, shape: tuple[int, ...], rows: int) -> None:
    """The model's output on ``rows`` rows must have one row per input row; probabilities and
    classes need (rows,) or (rows, classes)."""
    if not shape or shape[0] != rows:
        raise InvalidArgument(
            f"the model's output has shape {list(shape)} for {rows} input rows; a predict job "
            "needs one output row per input row (the batch dimension first)"
        )
    if kind != LOGITS and len(shape) > 2:
        raise InvalidArgument(
            f"output {kind!r} needs outputs of shape (rows,) or (rows, classes), but the "
            f"model's are {list(shape)}; use output='logits'"
        )


def _sigmoid(out: torch.Tensor, loss: str) -> bool:
    """Binary (or multi-label) logits: one column, or a model trained with bce_with_logits."""
    return loss == "bce_with_logits" or out.ndim == 1 or out.shape[1] == 1


def transform(out: torch.Tensor, kind: str, loss: str) -> torch.Tensor:
    """A batch's output as ``kind`` asks: float32 logits or probabilities, int64 classes
    (for sigmoid outputs: 1 where the logit is > 0, per output)."""
    logits = out.detach().float()
    if kind == LOGITS:
        return logits
    if kind == PROBS:
        return torch.sigmoid(logits) if _sigmoid(logits, loss) else torch.softmax(logits, dim=1)
    if kind == ARGMAX:
        if _sigmoid(logits, loss):
            return (logits > 0).to(torch.int64)
        return logits.argmax(dim=1)
    raise InvalidArgument(f"output {kind!r} is unknown; expected one of {list(OUTPUTS)}")
