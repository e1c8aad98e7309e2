"""``topk``: send the ``ratio`` largest-magnitude entries, keep the rest as error feedback.

The residual (what was not sent) stays on the worker and is added to the next gradient, so
every coordinate is eventually applied, only later: sent + new residual == gradient + old
residual, exactly. Without it top-k at 1% stalls; with it, it converges like plain SGD
(Stich et al. 2018, "Sparsified SGD with Memory").
"""

from __future__ import annotations

import torch

from pscluster.compression import sparse
from pscluster.compression.base import CodecState, Encoded


class TopK:
    name = "topk"

    def __init__(self, ratio: float) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"topk ratio must be in (0, 1], got {ratio}")
        self.density = ratio

    def new_state(self, length: int) -> CodecState:
        return {"residual": torch.zeros(length, dtype=torch.float32)}

    def prepare(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient

    def compress(self, gradient: torch.Tensor, state: CodecState, epoch: int) -> Encoded:
        total = gradient + state["residual"]
        idx = sparse.top_indices(total, sparse.keep_count(total.numel(), self.density))
        values = total[idx]
        residual = total  # a fresh tensor: the caller's state is left as it was
        residual[idx] = 0.0
        return Encoded(sparse.encode(idx, values), {"residual": residual})

    def decompress(self, payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
        return sparse.decode(payload, length)

    def max_payload_bytes(self, length: int) -> int:
        return sparse.max_payload_bytes(length)

    def ratio(self, length: int, epoch: int) -> float:
        return sparse.ratio(length, self.density)
