"""The model and the user dataset of bench/data.py, shipped to the workers as this file.

``Digits32`` reads examples/make_big_digits.py's ``.npy`` shards one sample at a time with
plain file reads (as a dataset of image files would), and augments each as a user's would
(a random shift of up to two pixels and Gaussian noise), drawing from numpy's global
generator, which the workers' loader seeds per sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROW_BYTES = 32 * 32 * 4  # one float32 1x32x32 image


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
    """One split of the generated digits, read a sample at a time from the files (as a
    dataset of image files would be) and augmented on read (train only)."""

    def __init__(self, root: str, split: str) -> None:
        folder = Path(root) / split
        self.files = sorted(folder.glob("x-*.npy"))
        self.y = np.concatenate(
            [np.load(p.with_name(p.name.replace("x-", "y-"))) for p in self.files]
        )
        rows = [int(np.load(p, mmap_mode="r").shape[0]) for p in self.files]
        self.starts = np.cumsum([0, *rows])
        self.offsets = [_data_offset(p) for p in self.files]
        self.augment = split == "train"
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _read(self, shard: int, row: int) -> np.ndarray:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.files[shard], os.O_RDONLY)
        data = os.pread(fd, ROW_BYTES, self.offsets[shard] + row * ROW_BYTES)
        return np.frombuffer(data, dtype=np.float32).reshape(1, 32, 32).copy()

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        x = self._read(shard, index - int(self.starts[shard]))
        if self.augment:
            dy, dx = np.random.randint(-2, 3, size=2)
            x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
            x += np.random.normal(0.0, 0.05, size=x.shape).astype(np.float32)
        return x, int(self.y[index])


def _data_offset(path: Path) -> int:
    """Where a .npy file's array begins (after its header)."""
    return int(np.load(path, mmap_mode="r").offset)


def make_digits32(split: str, root: str) -> Digits32:
    return Digits32(root, split)
