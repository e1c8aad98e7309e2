"""The data of the digits example: scikit-learn's bundled 8x8 digits (no download).

1797 images, 10 classes; pixels scaled from 0..16 to 0..1. The split is stratified and
seeded, so every run (and the local check in train_digits.py) sees the same test set.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Arrays = tuple[np.ndarray, np.ndarray]


def load() -> tuple[Arrays, Arrays]:
    """((X_train, y_train), (X_test, y_test)): X float32 of shape (n, 64), y int64."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return (x_train, y_train), (x_test, y_test)
