"""The data of the regression example: scikit-learn's bundled diabetes set (no download).

442 patients, 10 features (age, sex, BMI, blood pressure, six blood serum measurements), and a
measure of disease progression one year later. The split is seeded; X and y are standardised
with the *training* set's mean and standard deviation (the test set must not leak into them),
so a test mse of 1.0 is what predicting the training mean everywhere would roughly score.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

Arrays = tuple[np.ndarray, np.ndarray]


def load() -> tuple[Arrays, Arrays]:
    """((X_train, y_train), (X_test, y_test)): X float32 (n, 10), y float32 (n, 1)."""
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = y_train.mean(), y_train.std()

    def features(a: np.ndarray) -> np.ndarray:
        return ((a - x_mean) / x_std).astype(np.float32)

    def target(a: np.ndarray) -> np.ndarray:
        # (n, 1), the shape of the model's output: mse would broadcast (n,) against (n, 1).
        return ((a - y_mean) / y_std).astype(np.float32).reshape(-1, 1)

    return (features(x_train), target(y_train)), (features(x_test), target(y_test))
