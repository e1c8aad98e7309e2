"""ROC AUC by ranks, the one implementation: the training metric of a ``bce_with_logits`` job
(:mod:`pscluster.model.objective`) and the ceiling a synthetic CTR set plants
(:mod:`pscluster.data.synthetic_ctr`) must agree to the last digit, so both use this. NumPy
only: the data generator does not import torch for it."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def rank_auc(label: ArrayLike, score: ArrayLike) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic, ties given their average rank;
    ValueError unless there are as many scores as labels and both classes (> 0.5 is
    positive)."""
    y = np.asarray(label).reshape(-1) > 0.5
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    positives, n = int(y.sum()), len(y)
    if len(s) != n or positives in (0, n):
        raise ValueError(f"AUC needs as many scores as labels and both classes; {positives}/{n}")
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * (n - positives)))
