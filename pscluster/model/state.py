"""State dicts and datasets as safetensors bytes: typed, zero-pickle, readable from numpy."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load
from safetensors.torch import save as _save

from pscluster.transport.errors import InvalidArgument


def dumps(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return _save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def loads(blob: bytes | bytearray, what: str = "blob") -> dict[str, torch.Tensor]:
    try:
        return _load(bytes(blob))
    except (SafetensorError, ValueError) as e:  # corrupt or truncated upload
        raise InvalidArgument(f"{what} is not a valid safetensors file: {e}") from e
