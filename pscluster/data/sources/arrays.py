"""The uploaded arrays as a source: the job's ``dataset`` blob, read by batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from pscluster.data import inputs
from pscluster.data.dataset import Dataset
from pscluster.data.sources.base import ReadyBatch, Sample


class ArraySamples:
    """One split of a :class:`Dataset`; reading a batch is one index per tensor."""

    def __init__(self, x: inputs.Inputs, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> Sample:
        return row_of(self.x, index), self.y[index]

    def __getitems__(self, indices: Sequence[int]) -> ReadyBatch:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ReadyBatch(inputs.take(self.x, idx), self.y[idx])


def row_of(x: inputs.Inputs, index: int) -> object:
    if isinstance(x, torch.Tensor):
        return x[index]
    if isinstance(x, tuple):
        return tuple(t[index] for t in x)
    return {k: t[index] for k, t in x.items()}


class UploadedSource:
    """The arrays the SDK uploaded with the job (a fetched blob, its tensors views on it)."""

    kind: ClassVar[str] = "uploaded"
    seeds_samples: ClassVar[bool] = False

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def open(self, split: str) -> ArraySamples:
        return ArraySamples(getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y"))
