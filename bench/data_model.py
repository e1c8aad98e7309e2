"""The model and the user dataset of bench/data.py, shipped to the workers as this file.

``Digits32`` reads examples/make_big_digits.py's ``.npy`` shards memory-mapped, one sample at
a time, and augments each as a user's dataset would (a random shift of up to two pixels and
Gaussian noise), drawing from numpy's global generator, which the workers' loader seeds per
sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """1x32x32 -> 10 classes: two 3x3 convolutions, pooled to 4x4, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Parquet rows are flat vectors of 1,024 values; the .npy shards are 1x32x32.
        out: torch.Tensor = self.head(self.features(x.view(-1, 1, 32, 32)).flatten(1))
        return out


class Digits32:
    """One split of the generated digits, augmented on read (train only)."""

    def __init__(self, root: str, split: str) -> None:
        folder = Path(root) / split
        xs = sorted(folder.glob("x-*.npy"))
        self.x = [np.load(p, mmap_mode="r") for p in xs]
        self.y = [np.load(folder / p.name.replace("x-", "y-"), mmap_mode="r") for p in xs]
        self.starts = np.cumsum([0] + [len(y) for y in self.y])
        self.augment = split == "train"

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        row = index - int(self.starts[shard])
        x = np.array(self.x[shard][row], dtype=np.float32)
        if self.augment:
            dy, dx = np.random.randint(-2, 3, size=2)
            x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
            x += np.random.normal(0.0, 0.05, size=x.shape).astype(np.float32)
        return x, int(self.y[shard][row])


def make_digits32(split: str, root: str) -> Digits32:
    return Digits32(root, split)
