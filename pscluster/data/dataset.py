"""A job's data: train and test arrays in one safetensors blob.

The SDK uploads the user's arrays once; every worker fetches the blob and reads the
partitions it leases. X may be one array or several (a tuple or a dict: see
:mod:`pscluster.data.inputs`); y is one array of any shape. Keys are plain so that any tool
can open the blob: ``train_x`` for one input, ``train_x/0``, ``train_x/1``... or
``train_x/<name>`` for several, with the structure in the file's metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as _load
from safetensors.torch import save as _save

from pscluster.data import inputs
from pscluster.data.inputs import Inputs, Structure
from pscluster.data.partitions import row_order
from pscluster.errors import InvalidArgument
from pscluster.model import state

SPLITS = ("train", "test")
# Metadata: how the tensors of X fit together (one, a tuple or a dict: data.inputs.Structure).
STRUCTURE_KEY = "x_structure"
# Metadata: the seed whose partition order the training rows are stored in.
TRAIN_ORDER = "train_order_seed"


@dataclass(frozen=True)
class Dataset:
    train_x: Inputs
    train_y: torch.Tensor
    test_x: Inputs
    test_y: torch.Tensor

    @classmethod
    def from_arrays(cls, train: tuple[object, object], test: tuple[object, object]) -> Dataset:
        tx = inputs.as_inputs(train[0], "train X", as_tensor)
        vx = inputs.as_inputs(test[0], "test X", as_tensor)
        ds = cls(tx, as_tensor(train[1], "train y"), vx, as_tensor(test[1], "test y"))
        ds.validate()
        return ds

    @property
    def structure(self) -> Structure:
        return inputs.structure(self.train_x)

    def validate(self) -> None:
        if inputs.structure(self.test_x) != self.structure:
            raise InvalidArgument(
                f"train X is {_describe(self.structure)} but test X is "
                f"{_describe(inputs.structure(self.test_x))}; pass both the same way"
            )
        for x, y, split in (
            (self.train_x, self.train_y, "train"),
            (self.test_x, self.test_y, "test"),
        ):
            rows = inputs.rows(x, f"{split} X")
            if rows == 0:
                raise InvalidArgument(f"{split} X is empty")
            if y.ndim < 1 or y.shape[0] != rows:
                raise InvalidArgument(
                    f"{split} X has {rows} rows but {split} y has "
                    f"{y.shape[0] if y.ndim else 'no'} rows"
                )
            for key, a, b in zip(
                self.structure.keys or ("",),
                inputs.parts(x),
                inputs.parts(self.train_x),
                strict=True,
            ):
                if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                    where = f"[{key!r}]" if key else ""
                    raise InvalidArgument(
                        f"test X{where} is {a.dtype} rows of {tuple(a.shape[1:])} but train X"
                        f"{where} is {b.dtype} rows of {tuple(b.shape[1:])}"
                    )

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for split in SPLITS:
            x = getattr(self, f"{split}_x")
            for key, t in zip(self.structure.keys or ("",), inputs.parts(x), strict=True):
                out[f"{split}_x/{key}" if key else f"{split}_x"] = t
            out[f"{split}_y"] = getattr(self, f"{split}_y")
        return out

    def to_blob(self, seed: int | None = None) -> bytes:
        """The safetensors file the SDK uploads. With the job's ``seed`` the training rows are
        stored in the order that seed deals them into partitions (:func:`row_order`), so each
        partition is one contiguous range of rows: a worker fetches only the partitions it
        leases, as byte ranges (:mod:`pscluster.worker.uploaded`)."""
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        order = None if seed is None else torch.from_numpy(row_order(len(self.train_y), seed))
        metadata = {STRUCTURE_KEY: json.dumps(self.structure.to_json())}
        if seed is not None:
            metadata[TRAIN_ORDER] = str(seed)
        for key, t in self.tensors().items():
            if order is not None and key.startswith("train_"):
                t = t.index_select(0, order)
            t = t.contiguous()
            # The same array as train and test (evaluating on the training set): safetensors
            # stores no shared memory, so the second use is a copy.
            if t.numel() and t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[key] = t
        return _save(tensors, metadata=metadata)

    @classmethod
    def from_blob(cls, blob: bytes | bytearray) -> Dataset:
        try:
            tensors = _load(bytes(blob))
        except (SafetensorError, ValueError) as e:
            raise InvalidArgument(f"the uploaded data is not a valid safetensors file: {e}") from e
        return cls.from_tensors(_in_given_order(tensors, blob), structure_of(blob))

    @classmethod
    def from_buffer(cls, blob: bytearray) -> Dataset:
        """The dataset of a fetched blob, its tensors views on ``blob`` (no copy, unless its
        training rows are stored in partition order: they are put back in the given order)."""
        tensors = state.views(blob, "the uploaded data")
        return cls.from_tensors(_in_given_order(tensors, blob), structure_of(blob))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], structure: Structure) -> Dataset:
        def split_x(split: str) -> Inputs:
            names = [f"{split}_x/{k}" for k in structure.keys] or [f"{split}_x"]
            missing = [n for n in names if n not in tensors]
            if missing:
                raise InvalidArgument(f"the uploaded data lacks {missing}")
            return structure.build([tensors[n] for n in names])

        missing_y = [f"{s}_y" for s in SPLITS if f"{s}_y" not in tensors]
        if missing_y:
            raise InvalidArgument(f"the uploaded data lacks {missing_y}")
        ds = cls(split_x("train"), tensors["train_y"], split_x("test"), tensors["test_y"])
        ds.validate()
        return ds


def structure_of(blob: bytes | bytearray) -> Structure:
    return structure_of_header(state.header(blob, "the uploaded data")[0])


def structure_of_header(header: dict[str, Any]) -> Structure:
    """The input structure from a blob's header (no metadata: one input, as older SDKs sent)."""
    raw = (header.get("__metadata__") or {}).get(STRUCTURE_KEY)
    if raw is None:
        return Structure("tensor")
    try:
        return Structure.from_json(json.loads(raw))
    except ValueError as e:
        raise InvalidArgument(f"the uploaded data's input structure is unreadable: {e}") from e


def stored_order(header: dict[str, object]) -> int | None:
    """The seed whose partition order the blob's training rows are stored in (None: as
    given), from a safetensors header."""
    meta = header.get("__metadata__")
    raw = meta.get(TRAIN_ORDER) if isinstance(meta, dict) else None
    try:
        return None if raw is None else int(raw)
    except ValueError as e:
        raise InvalidArgument(f"the uploaded data's {TRAIN_ORDER} {raw!r} is not a seed") from e


def _in_given_order(
    tensors: dict[str, torch.Tensor], blob: bytes | bytearray
) -> dict[str, torch.Tensor]:
    seed = stored_order(state.header(blob, "the uploaded data")[0])
    if seed is None or "train_y" not in tensors:
        return tensors
    back = torch.from_numpy(np.argsort(row_order(len(tensors["train_y"]), seed)))
    return {k: t.index_select(0, back) if k.startswith("train_") else t for k, t in tensors.items()}


def _describe(s: Structure) -> str:
    if s.kind == "tensor":
        return "one array"
    return f"a {s.kind} of {len(s.keys)} arrays {list(s.keys) if s.kind == 'dict' else ''}".strip()


def train_rows(path: str | os.PathLike[str]) -> int:
    """Rows of a stored dataset blob's training split, read from its header only."""
    with safe_open(os.fspath(path), framework="pt") as f:  # type: ignore[no-untyped-call]
        return int(f.get_slice("train_y").get_shape()[0])


def as_tensor(a: object, name: str) -> torch.Tensor:
    """A user's array as the tensor a blob stores: float32 for floats, int64 for integers."""
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(a))
        except TypeError as e:
            raise InvalidArgument(f"{name} is not an array or tensor: {e}") from e
    if t.is_complex():
        raise InvalidArgument(f"{name} is {t.dtype}; complex data is not supported")
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.to(torch.float32)
    if not t.is_floating_point() and t.dtype != torch.int64:
        t = t.to(torch.int64)
    return t.contiguous()
