"""The sparse payload ``topk`` and ``dgc`` send: the chosen entries of a slice, nothing else.

Layout, little-endian: ``uint32 k``, then ``k`` uint32 indices in strictly increasing order,
then ``k`` float32 values; every other entry decodes to 0. Strict order makes a duplicate
index (whose value would be ambiguous) a format error the shard can see in one pass.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from pscluster.compression.base import RAW_ITEMSIZE
from pscluster.errors import InvalidArgument

_HEADER = struct.Struct("<I")
ENTRY_BYTES = 8  # uint32 index + float32 value


def keep_count(length: int, density: float) -> int:
    """How many entries a slice of ``length`` keeps at ``density`` (at least one if any)."""
    if length == 0:
        return 0
    return min(length, max(1, math.ceil(density * length)))


def top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest magnitudes, ascending."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    return torch.topk(values.abs(), k, sorted=False).indices.sort().values


def encode(indices: torch.Tensor, values: torch.Tensor) -> bytes:
    idx = indices.to(torch.int64).numpy().astype("<u4")
    return _HEADER.pack(len(idx)) + idx.tobytes() + values.to(torch.float32).numpy().tobytes()


def decode(payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
    if len(payload) < _HEADER.size:
        raise InvalidArgument(
            f"sparse payload has {len(payload)} bytes; it must start with a 4-byte count"
        )
    (k,) = _HEADER.unpack_from(payload)
    if k > length:
        raise InvalidArgument(f"sparse payload announces {k} entries for a slice of {length}")
    expected = _HEADER.size + ENTRY_BYTES * k
    if len(payload) != expected:
        raise InvalidArgument(
            f"sparse payload has {len(payload)} bytes; {k} entries need {expected} "
            f"(4 header + {k} x 4 index + {k} x 4 value)"
        )
    idx = np.frombuffer(payload, dtype="<u4", count=k, offset=_HEADER.size).astype(np.int64)
    vals = np.frombuffer(payload, dtype="<f4", count=k, offset=_HEADER.size + 4 * k)
    if k and (int(idx[-1]) >= length or (k > 1 and bool((np.diff(idx) <= 0).any()))):
        raise InvalidArgument(
            f"sparse payload indices must be strictly increasing and below {length}"
        )
    out = torch.zeros(length, dtype=torch.float32)
    if k:
        out[torch.from_numpy(idx)] = torch.from_numpy(vals.astype(np.float32))
    return out


def max_payload_bytes(length: int) -> int:
    return _HEADER.size + ENTRY_BYTES * length


def ratio(length: int, density: float) -> float:
    return RAW_ITEMSIZE * length / (_HEADER.size + ENTRY_BYTES * keep_count(length, density))
