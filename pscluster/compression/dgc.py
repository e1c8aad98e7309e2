"""``dgc``: Deep Gradient Compression (Lin et al., ICLR 2018) on the worker side.

The paper's four fixes that make 99.9% sparsity train like dense momentum SGD:
- momentum correction: momentum is accumulated on the worker *before* sparsification
  (u = m u + g; v = v + u), so what is finally sent carries the momentum it would have had;
- local gradient clipping: the worker's whole gradient is clipped to ``clip_norm`` before it
  is accumulated (the accumulation would otherwise amplify an exploding gradient);
- momentum-factor masking: where an entry of v is sent, that entry of u and v is reset, so
  stale momentum does not push the coordinate again;
- warm-up: the kept fraction falls exponentially (75%, 93.75%, ...) over the first
  ``warmup_epochs`` epochs until it reaches ``ratio``.
The shard applies the sparse sum as a gradient: give the job an optimizer without momentum.
"""

from __future__ import annotations

import torch

from pscluster.compression import sparse
from pscluster.compression.base import CodecState, Encoded


class DeepGradientCompression:
    name = "dgc"

    def __init__(
        self, ratio: float, momentum: float = 0.9, clip_norm: float = 0.0, warmup_epochs: int = 0
    ) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"dgc ratio must be in (0, 1], got {ratio}")
        if not 0 <= momentum < 1:
            raise ValueError(f"dgc momentum must be in [0, 1), got {momentum}")
        if clip_norm < 0:
            raise ValueError(f"dgc clip_norm must be >= 0 (0: no clipping), got {clip_norm}")
        self.final_density = ratio
        self.momentum = momentum
        self.clip_norm = clip_norm
        self.warmup_epochs = warmup_epochs

    def density(self, epoch: int) -> float:
        """The kept fraction in ``epoch``: 0.25**(epoch+1) during warm-up, never below ratio."""
        if epoch < self.warmup_epochs:
            return max(self.final_density, 0.25 ** (epoch + 1))
        return self.final_density

    def new_state(self, length: int) -> CodecState:
        zeros = torch.zeros(length, dtype=torch.float32)
        return {"momentum": zeros, "accumulated": zeros.clone()}

    def prepare(self, gradient: torch.Tensor) -> torch.Tensor:
        if self.clip_norm <= 0:
            return gradient
        norm = float(torch.linalg.vector_norm(gradient))
        if norm <= self.clip_norm:
            return gradient
        return gradient * (self.clip_norm / norm)

    def compress(self, gradient: torch.Tensor, state: CodecState, epoch: int) -> Encoded:
        u = state["momentum"] * self.momentum + gradient
        v = state["accumulated"] + u
        idx = sparse.top_indices(v, sparse.keep_count(v.numel(), self.density(epoch)))
        values = v[idx]
        v[idx] = 0.0
        u[idx] = 0.0
        return Encoded(sparse.encode(idx, values), {"momentum": u, "accumulated": v})

    def decompress(self, payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
        return sparse.decode(payload, length)

    def max_payload_bytes(self, length: int) -> int:
        return sparse.max_payload_bytes(length)

    def ratio(self, length: int, epoch: int) -> float:
        return sparse.ratio(length, self.density(epoch))
