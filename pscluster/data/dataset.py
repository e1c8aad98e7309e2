"""A job's data: train and test arrays in one safetensors blob.

The SDK uploads the user's arrays once; every worker fetches the blob and reads the
partitions it leases. Keys are fixed so that any tool can open the blob.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open

from pscluster.model import state
from pscluster.transport.errors import InvalidArgument

KEYS = ("train_x", "train_y", "test_x", "test_y")


@dataclass(frozen=True)
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @classmethod
    def from_arrays(
        cls,
        train: tuple[object, object],
        test: tuple[object, object],
    ) -> Dataset:
        tx, ty = (
            _as_tensor(a, name) for a, name in zip(train, ("train X", "train y"), strict=True)
        )
        vx, vy = (_as_tensor(a, name) for a, name in zip(test, ("test X", "test y"), strict=True))
        ds = cls(tx, ty, vx, vy)
        ds.validate()
        return ds

    def validate(self) -> None:
        for x, y, split in (
            (self.train_x, self.train_y, "train"),
            (self.test_x, self.test_y, "test"),
        ):
            if x.ndim < 1 or x.shape[0] == 0:
                raise InvalidArgument(f"{split} X is empty")
            if y.shape[0] != x.shape[0]:
                raise InvalidArgument(
                    f"{split} X has {x.shape[0]} rows but {split} y has {y.shape[0]}"
                )
            if not x.is_floating_point():
                raise InvalidArgument(f"{split} X must be floating point, got {x.dtype}")

    def to_blob(self) -> bytes:
        return state.dumps({k: getattr(self, k) for k in KEYS})

    @classmethod
    def from_blob(cls, blob: bytes | bytearray) -> Dataset:
        tensors = state.loads(blob, "dataset")
        missing = [k for k in KEYS if k not in tensors]
        if missing:
            raise InvalidArgument(f"dataset blob lacks {missing}; expected keys {list(KEYS)}")
        ds = cls(*(tensors[k] for k in KEYS))
        ds.validate()
        return ds


def train_rows(path: str | os.PathLike[str]) -> int:
    """Rows of a stored dataset blob's training split, read from its header only."""
    with safe_open(os.fspath(path), framework="pt") as f:  # type: ignore[no-untyped-call]
        return int(f.get_slice("train_x").get_shape()[0])


def _as_tensor(a: object, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(a))
        except TypeError as e:
            raise InvalidArgument(f"{name} is not an array or tensor: {e}") from e
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.to(torch.float32)
    if not t.is_floating_point() and t.dtype != torch.int64:
        t = t.to(torch.int64)
    return t.contiguous()
