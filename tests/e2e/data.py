"""The digits data set (bundled with scikit-learn, never downloaded), split as users would."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def digits() -> Split:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (xtr, ytr), (xte, yte)


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def digits_images() -> Split:
    """Digits as 1x8x8 images (for CNNs)."""
    (xtr, ytr), (xte, yte) = digits()
    return (xtr.reshape(-1, 1, 8, 8), ytr), (xte.reshape(-1, 1, 8, 8), yte)


def rotated_digits() -> Split:
    """Digits turned a quarter: a shifted task that a model trained on upright digits fails."""
    (xtr, ytr), (xte, yte) = digits()

    def turn(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(x.reshape(-1, 8, 8), axes=(1, 2)).reshape(-1, 64))

    return (turn(xtr), ytr), (turn(xte), yte)


def diabetes() -> Split:
    """scikit-learn's diabetes regression set (442 patients, 10 features), target scaled."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0)
    return (xtr, ytr), (xte, yte)


def token_bags(rows: int = 1200, length: int = 12, vocab: int = 200, seed: int = 0) -> Split:
    """Bags of token ids (int64) whose class is planted: bags of class 1 hold more ids from
    the upper half of the vocabulary."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    low = rng.integers(0, vocab // 2, (rows, length))
    high = rng.integers(vocab // 2, vocab, (rows, length))
    pick_high = rng.random((rows, length)) < np.where(y == 1, 0.7, 0.3)[:, None]
    ids = np.where(pick_high, high, low).astype(np.int64)
    cut = rows * 4 // 5
    return (ids[:cut], y[:cut]), (ids[cut:], y[cut:])


def eval_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of ``model`` in eval() mode, as a user measures the model they fetched."""
    model.eval()
    return accuracy(model, x, y)
