"""Half-precision values: what ``fp16`` and ``bf16`` share (2 bytes per value, no header)."""

from __future__ import annotations

import torch

from pscluster.compression.base import CodecState, Encoded, Stateless
from pscluster.transport import wire


class HalfPrecision(Stateless):
    """Round to nearest in a 2-byte float; ``dtype`` is the wire dtype (common_pb2.DType)."""

    name = ""
    dtype = 0
    # Values beyond this are clamped before rounding: a gradient entry that overflows to Inf
    # would make the shard refuse the whole push as non-finite.
    max_value = float("inf")

    def compress(self, gradient: torch.Tensor, state: CodecState, epoch: int) -> Encoded:
        clamped = gradient.clamp(-self.max_value, self.max_value)
        return Encoded(wire.encode(clamped, self.dtype))

    def decompress(self, payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
        return wire.decode(payload, self.dtype, length)

    def max_payload_bytes(self, length: int) -> int:
        return 2 * length

    def ratio(self, length: int, epoch: int) -> float:
        return 2.0
