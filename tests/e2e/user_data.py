"""Data sources as users write them: ``make_dataset(split, **args)`` returning a map-style
dataset. Shipped to the workers with the job's code, like the models in user_models."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from tests.e2e.data import digits_images


class DigitsImages(Dataset[tuple[torch.Tensor, int]]):
    """The digits as 1x8x8 images, read one sample at a time; ``noise`` adds Gaussian noise
    of that scale to each sample as it is read (augmentation: differs by epoch)."""

    def __init__(self, split: str, noise: float = 0.0) -> None:
        train, test = digits_images()
        self.x, self.y = train if split == "train" else test
        self.noise = noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.ascontiguousarray(self.x[index]))
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return x, int(self.y[index])


def make_digits(split: str, noise: float = 0.0) -> DigitsImages:
    return DigitsImages(split, noise)


def make_from_folder(split: str, root: str) -> DigitsImages:
    """Reads a marker under ``root`` first: a path only some machines have."""
    with open(os.path.join(root, "READY")) as marker:
        marker.read()
    return DigitsImages(split)


def make_broken(split: str) -> DigitsImages:
    raise RuntimeError(f"cannot open the {split} records: the index is corrupt")
