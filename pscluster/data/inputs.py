"""A model's inputs: one tensor, a tuple of tensors or a dict of named tensors.

Models take what their data is: images as one float tensor, token ids as int64, or several
inputs at once (``forward(self, ids, offsets)`` or ``forward(self, *, dense, sparse)``). The
user passes X as an array, a tuple or a dict; every operation on a batch (index, move, call the
model) goes through here so the rest of the code never asks which it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import nn

from pscluster.errors import InvalidArgument

Inputs: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
Kind = Literal["tensor", "tuple", "dict"]


@dataclass(frozen=True)
class Structure:
    """How the tensors of X fit together: ``keys`` are the tuple positions or dict keys."""

    kind: Kind
    keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": list(self.keys)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Structure:
        kind, keys = data.get("kind"), data.get("keys", [])
        if kind not in ("tensor", "tuple", "dict") or not isinstance(keys, list):
            raise InvalidArgument(f"the data's input structure {dict(data)!r} is not readable")
        return cls(kind, tuple(str(k) for k in keys))

    def build(self, parts: Sequence[torch.Tensor]) -> Inputs:
        """Inputs from their tensors in ``keys`` order."""
        if self.kind == "tensor":
            return parts[0]
        if self.kind == "tuple":
            return tuple(parts)
        return dict(zip(self.keys, parts, strict=True))


def as_inputs(x: object, what: str, convert: Callable[[object, str], torch.Tensor]) -> Inputs:
    """A user's X (array, tensor, tuple/list of them, or dict of them) as Inputs.

    ``convert`` turns one array into a tensor (and says what is wrong with it).
    """
    if isinstance(x, Mapping):
        if not x:
            raise InvalidArgument(f"{what} is an empty dict; pass the model's named inputs")
        bad = [k for k in x if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise InvalidArgument(
                f"{what} has keys {bad!r}; dict inputs are passed as forward(**X), so keys "
                "must be argument names"
            )
        return {k: convert(v, f"{what}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (tuple, list)) and not _is_array_like_list(x):
        if not x:
            raise InvalidArgument(f"{what} is an empty tuple; pass the model's inputs")
        return tuple(convert(v, f"{what}[{i}]") for i, v in enumerate(x))
    return convert(x, what)


def _is_array_like_list(x: Sequence[object]) -> bool:
    """A list of numbers (rows of one array), rather than a list of arrays."""
    return bool(x) and not isinstance(x[0], (np.ndarray, torch.Tensor, tuple, list, Mapping))


def structure(x: Inputs) -> Structure:
    if isinstance(x, torch.Tensor):
        return Structure("tensor")
    if isinstance(x, tuple):
        return Structure("tuple", tuple(str(i) for i in range(len(x))))
    return Structure("dict", tuple(x))


def parts(x: Inputs) -> list[torch.Tensor]:
    """The tensors of ``x`` in the order of its structure's keys."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, tuple):
        return list(x)
    return list(x.values())


def rows(x: Inputs, what: str) -> int:
    """Rows (samples) of ``x``: every tensor must have the same first dimension."""
    counts = {}
    for key, t in zip(structure(x).keys or ("",), parts(x), strict=True):
        if t.ndim < 1:
            raise InvalidArgument(f"{what}{_at(key)} is a scalar; expected one row per sample")
        counts[key] = int(t.shape[0])
    if len(set(counts.values())) > 1:
        raise InvalidArgument(f"{what} inputs have different numbers of rows: {counts}")
    return next(iter(counts.values()))


def _at(key: str) -> str:
    return f"[{key!r}]" if key else ""


def map_inputs(x: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    return structure(x).build([fn(t) for t in parts(x)])


def take(x: Inputs, index: torch.Tensor | slice) -> Inputs:
    """The rows ``index`` of every input."""
    return map_inputs(x, lambda t: t[index])


def to_device(x: Inputs, device: torch.device) -> Inputs:
    return map_inputs(x, lambda t: t.to(device))


def call(model: nn.Module, x: Inputs) -> torch.Tensor:
    """``model(x)``, ``model(*x)`` or ``model(**x)``, as the inputs are shaped."""
    if isinstance(x, torch.Tensor):
        out = model(x)
    elif isinstance(x, tuple):
        out = model(*x)
    else:
        out = model(**x)
    if not isinstance(out, torch.Tensor):
        raise InvalidArgument(
            f"{type(model).__name__}.forward returned {type(out).__name__}; it must return one "
            "tensor (the output the loss is computed on)"
        )
    return out
