"""The training metric's AUC (a bce_with_logits job's "auc") is the same rank AUC the synthetic
CTR data's ceiling is measured by, and scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pscluster.data.synthetic_ctr import rank_auc as ceiling_auc
from pscluster.model.objective import rank_auc as metric_auc


def test_the_metric_and_the_ceiling_agree_with_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    label = (rng.random(500) < 0.3).astype(np.float32)
    score = np.round(rng.normal(size=500) + label, 1).astype(np.float32)  # many ties

    expected = roc_auc_score(label, score)

    assert ceiling_auc(label, score) == pytest.approx(expected, abs=1e-12)
    assert metric_auc(torch.from_numpy(label), torch.from_numpy(score)) == pytest.approx(
        expected, abs=1e-12
    )


def test_where_one_class_is_missing_the_metric_is_one_half_and_the_ceiling_refuses() -> None:
    assert metric_auc(torch.ones(4), torch.arange(4.0)) == 0.5
    assert metric_auc(torch.zeros(4), torch.arange(4.0)) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        ceiling_auc(np.zeros(4), np.arange(4))
