"""Data sources a user writes in their own file: make_dataset(split, **args)."""

from __future__ import annotations

import numpy as np


class Rows:
    """Four features and a class label per row; ``label_offset`` makes labels wrong."""

    def __init__(self, split: str, rows: int, label_offset: int = 0, nan_row: int = -1) -> None:
        rng = np.random.default_rng(0 if split == "train" else 1)
        self.x = rng.normal(size=(rows, 4)).astype(np.float32)
        if nan_row >= 0:
            self.x[nan_row, 2] = np.nan
        self.y = rng.integers(0, 3, rows) + label_offset

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.x[index], int(self.y[index])


def make_rows(split: str, rows: int = 20, label_offset: int = 0, nan_row: int = -1) -> Rows:
    return Rows(split, rows, label_offset, nan_row)


def make_nothing(split: str) -> int:
    return 7


def make_typo(split: str) -> Rows:
    return Rows(split, rowz=3)  # type: ignore[call-arg]  # the user's bug


def make_dict_rows(split: str) -> Rows:
    return Rows(split, 10)
