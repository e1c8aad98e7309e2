"""A worker's compression state for one job: one codec state per shard range.

Error-feedback residuals and DGC momentum belong to the worker (the shard is stateless about
compression), and to one range each, because each shard's push succeeds or is refused on its
own. A range's new state is kept only once its shard has taken the push (``commit``): a push
refused as stale is recomputed on fresh parameters, and its residual must not count twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pscluster.compression import CompressionSettings, Encoded, make_compressor


class PushEncoder:
    def __init__(self, settings: CompressionSettings, ranges: Sequence[tuple[int, int]]) -> None:
        """``ranges`` are the (start, length) slices of the flat vector, in shard order."""
        self.codec = make_compressor(settings)
        self.ranges = list(ranges)
        self._states = [self.codec.new_state(length) for _, length in self.ranges]

    @property
    def name(self) -> str:
        return self.codec.name

    def encode(self, gradient: torch.Tensor, epoch: int) -> list[Encoded]:
        """Each range's payload (and the state to commit if its shard applies it)."""
        prepared = self.codec.prepare(gradient.detach().reshape(-1).to(torch.float32))
        return [
            self.codec.compress(prepared[start : start + length], state, epoch)
            for (start, length), state in zip(self.ranges, self._states, strict=True)
        ]

    def commit(self, index: int, encoded: Encoded) -> None:
        """Range ``index``'s push was taken by its shard: its state moves on."""
        self._states[index] = encoded.state
