"""The names of losses and metrics, without torch.

:mod:`pscluster.model.objective` holds what they mean; these constants live apart so that
code that only shows or checks names (the CLI's tables, job files) answers without loading
torch, which takes seconds.
"""

from __future__ import annotations

BUILTIN_LOSSES = ("cross_entropy", "mse", "l1", "bce_with_logits")
CUSTOM = "custom"
LOSSES = (*BUILTIN_LOSSES, CUSTOM)
# "auc": the area under the ROC curve of bce_with_logits outputs (click-through models).
METRICS = ("accuracy", "auc", "mse", "mae", "loss")
# Metrics whose lower values are better (the loss too); accuracy is the one that rises.
LOWER_IS_BETTER = frozenset({"mse", "mae", "loss"})
