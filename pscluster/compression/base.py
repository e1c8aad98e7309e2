"""The ``Compressor`` protocol: how a worker shrinks a gradient slice and a shard restores it.

A codec is split the way its state is: ``compress`` runs on the worker and may carry state
from one push to the next (an error-feedback residual, DGC's momentum), ``decompress`` runs on
the shard and is a pure function of the payload, so a shard holds no compression state and
any shard can decode any worker's push. State is passed in and returned rather than kept in
the codec, so a push that the shard refuses as stale can be dropped without corrupting it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

# Per-range state a codec carries between pushes; empty for stateless codecs.
CodecState = dict[str, torch.Tensor]

RAW_ITEMSIZE = 4  # a gradient value uncompressed: float32


@dataclass(frozen=True)
class CompressionSettings:
    """A job's compression, as decoded from ``common_pb2.CompressionConfig`` with defaults."""

    name: str = "none"
    ratio: float = 0.01
    momentum: float = 0.9
    clip_norm: float = 0.0
    warmup_epochs: int = 0


@dataclass(frozen=True)
class Encoded:
    """A compressed slice: the payload to send and the codec state to keep if it is applied."""

    payload: bytes | bytearray | memoryview
    state: CodecState = field(default_factory=dict)


class Compressor(Protocol):
    """One codec. ``name`` is what the job spec and the push header carry."""

    name: str

    def new_state(self, length: int) -> CodecState:
        """The worker-side state of one fresh slice of ``length`` values. Its tensors must be
        linear in the gradients that make them (a residual, a momentum): the worker rescales
        them when fp16's loss scale moves (pscluster.worker.compressed)."""
        ...

    def prepare(self, gradient: torch.Tensor) -> torch.Tensor:
        """A hook on the worker's whole gradient before it is cut into slices (DGC clips)."""
        ...

    def compress(self, gradient: torch.Tensor, state: CodecState, epoch: int) -> Encoded:
        """Encode a flat float32 slice; ``state`` is not modified (the new one is returned)."""
        ...

    def decompress(self, payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
        """``length`` float32 values; InvalidArgument if the payload is malformed."""
        ...

    def max_payload_bytes(self, length: int) -> int:
        """The most bytes a valid payload of ``length`` values can have (a receive limit)."""
        ...

    def ratio(self, length: int, epoch: int) -> float:
        """Expected raw float32 bytes over payload bytes for a slice of ``length`` values."""
        ...


class Stateless:
    """Defaults for codecs that carry nothing between pushes."""

    def new_state(self, length: int) -> CodecState:
        return {}

    def prepare(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient
