"""``int8``: one float32 scale per chunk of values and one int8 per value (~4x fewer bytes).

Payload, little-endian: ``uint32 chunk`` (values per scale), ``ceil(length / chunk)`` float32
scales, then ``length`` int8 values in [-127, 127]; value i decodes to
``q[i] * scale[i // chunk]``. Rounding is stochastic (floor(x / scale + U[0, 1))), so a value
is unbiased and off by less than its chunk's scale = max |x| / 127. A scale per chunk rather
than per slice keeps one large entry from flattening a whole shard's gradient to zero.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from pscluster.compression.base import CodecState, Encoded, Stateless
from pscluster.errors import InvalidArgument

DEFAULT_CHUNK = 512
LEVELS = 127
_HEADER = struct.Struct("<I")


class Int8(Stateless):
    name = "int8"

    def __init__(self, chunk: int = DEFAULT_CHUNK, seed: int | None = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 values per scale, got {chunk}")
        self.chunk = chunk
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def compress(self, gradient: torch.Tensor, state: CodecState, epoch: int) -> Encoded:
        n = gradient.numel()
        chunks = math.ceil(n / self.chunk)
        padded = torch.zeros(chunks * self.chunk, dtype=torch.float32)
        padded[:n] = gradient.reshape(-1)
        rows = padded.view(chunks, self.chunk)
        scales = rows.abs().amax(dim=1) / LEVELS
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        noise = torch.rand(rows.shape, generator=self._generator)
        q = torch.floor(rows / safe[:, None] + noise).clamp_(-LEVELS, LEVELS)
        q = q.to(torch.int8).reshape(-1)[:n]
        payload = _HEADER.pack(self.chunk) + scales.numpy().tobytes() + q.numpy().tobytes()
        return Encoded(payload)

    def decompress(self, payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
        if len(payload) < _HEADER.size:
            raise InvalidArgument(
                f"int8 payload has {len(payload)} bytes; it must start with a 4-byte chunk size"
            )
        (chunk,) = _HEADER.unpack_from(payload)
        if chunk < 1:
            raise InvalidArgument("int8 payload has chunk size 0; expected >= 1 values per scale")
        chunks = math.ceil(length / chunk)
        expected = _HEADER.size + 4 * chunks + length
        if len(payload) != expected:
            raise InvalidArgument(
                f"int8 payload has {len(payload)} bytes; {length} values in chunks of {chunk} "
                f"need {expected} (4 header + {chunks} scales x 4 + {length} x 1)"
            )
        scales = np.frombuffer(payload, dtype="<f4", count=chunks, offset=_HEADER.size)
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise InvalidArgument("int8 payload has a NaN, Inf or negative scale")
        q = np.frombuffer(payload, dtype=np.int8, count=length, offset=_HEADER.size + 4 * chunks)
        if length and int(q.min()) < -LEVELS:
            raise InvalidArgument(f"int8 payload has the value -128; expected -{LEVELS}..{LEVELS}")
        values = torch.from_numpy(q.astype(np.float32))
        # Index the scales rather than repeat each one `chunk` times: the sender picks the chunk
        # size, and repeating would allocate chunk x 4 bytes whatever the length.
        per_value = scales.astype(np.float32)[np.arange(length) // chunk]
        return values * torch.from_numpy(per_value)

    def max_payload_bytes(self, length: int) -> int:
        # A sender may choose any chunk size; chunk 1 is the largest payload.
        return _HEADER.size + 5 * length

    def ratio(self, length: int, epoch: int) -> float:
        chunks = math.ceil(length / self.chunk)
        return 4 * length / (_HEADER.size + 4 * chunks + length) if length else 1.0
