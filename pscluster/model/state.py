"""State dicts and datasets as safetensors bytes: typed, zero-pickle, readable from numpy."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load
from safetensors.torch import save as _save

from pscluster.errors import InvalidArgument


def dumps(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return _save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def loads(blob: bytes | bytearray, what: str = "blob") -> dict[str, torch.Tensor]:
    try:
        return _load(bytes(blob))
    except (SafetensorError, ValueError) as e:  # corrupt or truncated upload
        raise InvalidArgument(f"{what} is not a valid safetensors file: {e}") from e


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype ("F32", "I64", ...)."""
    return _NAMES[dtype]


def dtype_of(name: object, what: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name ("F32", "I64", ...)."""
    if not isinstance(name, str) or name not in _DTYPES:
        raise InvalidArgument(f"{what}: dtype {name!r} is not supported")
    return _DTYPES[name]


def header(blob: bytes | bytearray | memoryview, what: str) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and where its data begins."""
    view = memoryview(blob)
    if view.nbytes < 8:
        raise InvalidArgument(f"{what} is not a valid safetensors file: it is truncated")
    length = int.from_bytes(view[:8], "little")
    if 8 + length > view.nbytes:
        raise InvalidArgument(f"{what} is not a valid safetensors file: its header is truncated")
    try:
        parsed = json.loads(bytes(view[8 : 8 + length]))
    except ValueError as e:
        raise InvalidArgument(f"{what} is not a valid safetensors file: {e}") from e
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"{what} is not a valid safetensors file: its header is no object")
    return parsed, 8 + length


def views(blob: bytearray, what: str = "blob") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in ``blob``, as views on its memory.

    :func:`loads` copies every tensor out of the file; a worker that fetched a large blob into
    one buffer would hold it twice. These views keep ``blob`` alive and copy nothing.
    """
    meta, start = header(blob, what)
    out: dict[str, torch.Tensor] = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"{what}: entry {name!r} is malformed: {e}") from e
        count = math.prod(shape)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if end - begin != count * itemsize or start + end > len(blob):
            raise InvalidArgument(f"{what}: entry {name!r} does not fit the file")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(blob, dtype=dtype, count=count, offset=start + begin)
        out[name] = flat.view(shape)
    return out
