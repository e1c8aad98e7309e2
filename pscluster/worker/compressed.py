"""A worker's compression state for one job: one codec state per shard range.

Error-feedback residuals and DGC momentum belong to the worker (the shard is stateless about
compression), and to one range each, because each shard's push succeeds or is refused on its
own. A range's new state is kept only once its shard has taken the push (``commit``): a push
refused as stale is recomputed on fresh parameters, and its residual must not count twice.

Under mode "auto" a push carries a gradient or, with local steps, the change of the worker's
own steps over lr (pscluster.worker.local_sgd), and the number can change while the job runs.
The shards step the job's optimizer on a gradient but add a change at lr, so a residual held
back from changes is not added to a gradient: momentum would apply it up to 1 / (1 - beta)
times over, and Adam would rescale it as if it were one. Such a range starts afresh instead
(what it held back is dropped, as at the end of a job). A gradient's residual does go into a
change: the shards add it at lr, one plain SGD step of what was held back.

With fp16 loss scaling a gradient goes out times its loss scale (the shards divide by the
header's ``grad_scale``), and the scale moves while the job runs (doubled after a run of
finite steps, halved at an overflow). A state is kept in the units of the push that left it,
so it is rescaled by the new scale over the old before it is added: the codecs' states (a
residual, DGC's momentum and accumulation) are linear in the gradients they were made of.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from pscluster.compression import CodecState, CompressionSettings, Encoded, make_compressor


@dataclass(frozen=True)
class Units:
    """What a codec state is made of: gradients times ``scale`` (fp16's loss scale, 1 without
    it), or the change of local steps over lr (``change``)."""

    change: bool = False
    scale: float = 1.0


class PushEncoder:
    def __init__(self, settings: CompressionSettings, ranges: Sequence[tuple[int, int]]) -> None:
        """``ranges`` are the (start, length) slices of the flat vector, in shard order."""
        self.codec = make_compressor(settings)
        self.ranges = list(ranges)
        self._states = [self.codec.new_state(length) for _, length in self.ranges]
        # Per range, the units of its state; and those the last encode would leave there once
        # committed.
        self._units = [Units()] * len(self.ranges)
        self._encoded = Units()

    @property
    def name(self) -> str:
        return self.codec.name

    def encode(
        self,
        gradient: torch.Tensor,
        epoch: int,
        ranges: Iterable[int] | None = None,
        *,
        units: Units = Units(),
    ) -> dict[int, Encoded]:
        """The payload of each range in ``ranges`` (all by default), by index, with the state
        to commit if its shard takes it. Nothing changes until :meth:`commit`. ``units``:
        what ``gradient`` is (see the module)."""
        prepared = self.codec.prepare(gradient.detach().reshape(-1).to(torch.float32))
        wanted = range(len(self.ranges)) if ranges is None else ranges
        out = {}
        for i in wanted:
            start, length = self.ranges[i]
            state = self._state_in(i, units)
            out[i] = self.codec.compress(prepared[start : start + length], state, epoch)
        self._encoded = units
        return out

    def _state_in(self, index: int, units: Units) -> CodecState:
        """Range ``index``'s state, in ``units``: afresh where it came from a change and a
        gradient goes out, rescaled where the loss scale moved."""
        if self._units[index].change and not units.change:
            return self.codec.new_state(self.ranges[index][1])
        return self._rescaled(index, units.scale)

    def _rescaled(self, index: int, scale: float) -> CodecState:
        """Range ``index``'s state at loss scale ``scale``."""
        held, state = self._units[index].scale, self._states[index]
        if held == scale:
            return state
        return {k: v * (scale / held) for k, v in state.items()}

    def recut(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Cut the codec state (a residual, DGC's momentum: one value per parameter) over new
        ranges of the same vector, when the job moved between shards: nothing it held back
        for a later push is lost."""
        ranges = list(ranges)
        if ranges == self.ranges:
            return
        # One scale for all (the last push's) before the cut; a range whose state came from a
        # change marks every new range: at worst a gradient's residual is dropped with it,
        # never a change's run through the optimizer.
        scale = self._encoded.scale
        states = [self._rescaled(i, scale) for i in range(len(self.ranges))]
        keys = set().union(*(s.keys() for s in states)) if states else set()
        whole = {k: torch.cat([s[k] for s in states]) for k in keys}
        self._states = [
            {k: v[start : start + length].clone() for k, v in whole.items()}
            for start, length in ranges
        ]
        self._units = [Units(any(u.change for u in self._units), scale)] * len(ranges)
        self.ranges = ranges

    def commit(self, index: int, encoded: Encoded) -> None:
        """Range ``index``'s push was taken by its shard: its state moves on. Every range is
        committed on its own shard's answer, never on another's."""
        self._states[index] = encoded.state
        self._units[index] = self._encoded

    def state(self, index: int) -> CodecState:
        """Range ``index``'s codec state now (a residual, DGC's momentum; empty if none)."""
        return self._states[index]
