"""Weights a shard holds at exactly zero: the pruned weights of a pruned model's fine-tune.

A pruned model is fine-tuned from its pruned weights, and pruning only keeps its promise if
those weights are still zero when the fine-tune ends. Masking the gradient would not do it:
weight decay, momentum and Adam's moments move a weight whose gradient is zero. So the
shard sets the masked positions to zero again after every optimizer step, whatever the mode
(async, sync, ssp: they all update through ``JobState.apply``) and whatever the optimizer.

Which positions are masked is read once, when the job is created: the zeros of its initial
values inside the spans its config names (``JobConfig.hold_zeros``, from
``JobSpec.hold_zeros``). No mask travels on the wire; the pruned initial state already says
where the zeros are. After that the mask is state (a checkpoint holds it), because a restored
job starts from the checkpoint's values, where a trained weight may also have reached zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pscluster.errors import InvalidArgument

Span = tuple[int, int]


class ZeroMask:
    """A bool mask over a shard's range of one job's values; True: held at zero."""

    def __init__(self, mask: torch.Tensor | None) -> None:
        # None when nothing is held: the common case costs neither memory nor a pass per step.
        self.mask = mask if mask is not None and bool(mask.any()) else None

    @classmethod
    def of_zeros(cls, values: torch.Tensor, spans: Sequence[Span]) -> ZeroMask:
        """The exact zeros of ``values`` inside ``spans`` ((start, length) in the range)."""
        if not spans:
            return cls(None)
        mask = torch.zeros(values.shape, dtype=torch.bool)
        for start, length in spans:
            if start < 0 or length < 1 or start + length > values.numel():
                raise InvalidArgument(
                    f"hold_zeros span ({start}, {length}) is outside the shard's range of "
                    f"{values.numel()} values"
                )
            mask[start : start + length] = values[start : start + length] == 0
        return cls(mask)

    @classmethod
    def from_state(cls, stored: torch.Tensor | None, length: int) -> ZeroMask:
        """The mask a checkpoint holds (uint8, one per value of the range)."""
        if stored is None:
            return cls(None)
        if stored.shape != (length,):
            raise InvalidArgument(
                f"a checkpoint's zero mask has {stored.numel()} entries; the range has {length}"
            )
        return cls(stored.to(torch.bool))

    def __len__(self) -> int:
        """How many values are held at zero."""
        return 0 if self.mask is None else int(self.mask.sum())

    def apply(self, values: torch.Tensor) -> None:
        """Set the held positions of ``values`` (the shard's range, in place) to zero."""
        if self.mask is not None:
            values.masked_fill_(self.mask, 0.0)

    def to_state(self) -> torch.Tensor | None:
        """For a checkpoint: uint8 (safetensors stores it everywhere), None when empty."""
        return None if self.mask is None else self.mask.to(torch.uint8)
