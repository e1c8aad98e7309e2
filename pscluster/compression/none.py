"""``none``: raw little-endian float32, the reference every other codec is measured against."""

from __future__ import annotations

import torch

from pscluster.compression.base import RAW_ITEMSIZE, CodecState, Encoded, Stateless
from pscluster.transport import wire
from pscluster.v1 import common_pb2


class NoCompression(Stateless):
    name = "none"

    def compress(self, gradient: torch.Tensor, state: CodecState, epoch: int) -> Encoded:
        return Encoded(wire.encode(gradient))

    def decompress(self, payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
        return wire.decode(payload, common_pb2.DTYPE_FLOAT32, length)

    def max_payload_bytes(self, length: int) -> int:
        return RAW_ITEMSIZE * length

    def ratio(self, length: int, epoch: int) -> float:
        return 1.0
