"""A job's model buffers on one shard (BatchNorm running statistics, num_batches_tracked, any
registered buffer), kept as float64 beside the float32 parameter range.

Buffers are not trained by gradients: each worker changes them as a side effect of its forward
passes and sends the change (its buffers after its batches minus the ones it pulled). Adding
every applied change is the running merge async and ssp want (one process would have made the
same updates in sequence); a sync step adds the *average* change of its pushes, which is the
average of the members' new values since they all pulled the same buffers, except over the
counter spans (num_batches_tracked counts every worker's batches), where the changes add up.

float64 on purpose: with one worker, b + (v - b) computed in float64 from float32 values gives
``v`` back, so a single-process run stays bit-exact in the model's float32 buffers. (Exactly so
while ``v`` and ``b`` are within a factor 2**29 of each other, which makes ``v - b`` exact in
float64; a value that jumps by more in one step lands within float64 rounding of ``v``.)
Workers must compute their delta against the float64 values they pulled, and send 0 (not
``inf - inf``) for entries they did not change, such as a constant ``-inf`` attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pscluster.errors import InvalidArgument

Span = tuple[int, int]  # (start, length), relative to the job's buffer_start
_LE_FLOAT64 = np.dtype("<f8")


def encode_buffers(values: torch.Tensor) -> bytes:
    """float64 values as the wire's little-endian bytes (``PullHeader.buffers``,
    ``PushHeader.buffer_delta``, ``ShardJobConfig.initial_buffers``)."""
    array = values.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
    return array.astype(_LE_FLOAT64, copy=False).tobytes()


def decode_buffers(raw: bytes, length: int, what: str) -> torch.Tensor:
    """Little-endian float64 bytes as a tensor of ``length`` values (a copy, ours to change);
    InvalidArgument naming ``what`` and the expected size otherwise."""
    if len(raw) != length * 8:
        raise InvalidArgument(
            f"{what} has {len(raw)} bytes; expected {length} float64 values = {length * 8} bytes"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=_LE_FLOAT64).astype(np.float64))


def check_buffer_spec(buffer_length: int, counters: Sequence[Span]) -> None:
    """InvalidArgument unless every counter span lies inside the buffer range. The coordinator
    may call this on what it is about to send, as the shard does on what it receives."""
    for start, length in counters:
        if start + length > buffer_length:
            raise InvalidArgument(
                f"counter span [{start}, {start + length}) reaches past the buffer range "
                f"[0, {buffer_length}); spans are relative to buffer_start"
            )


def initial_buffers(buffer_length: int, raw: bytes) -> torch.Tensor | None:
    """A new job's buffers from ``ShardJobConfig.initial_buffers`` (None when it has none)."""
    if buffer_length == 0:
        if raw:
            raise InvalidArgument(
                f"initial_buffers has {len(raw)} bytes but buffer_length is 0; send none"
            )
        return None
    if not raw:
        raise InvalidArgument(
            f"buffer_length is {buffer_length} but initial_buffers is empty; send the "
            "buffers' initial values (float64 little-endian)"
        )
    return decode_buffers(raw, buffer_length, "initial_buffers")


def decode_delta(raw: bytes, buffer_length: int) -> torch.Tensor | None:
    """A push's buffer delta; None for an empty one, which means "no change"."""
    if not raw:
        return None
    return decode_buffers(raw, buffer_length, "buffer_delta")


class JobBuffers:
    """The float64 buffer range of one job; the job calls it under its lock."""

    def __init__(self, values: torch.Tensor | None, counters: Sequence[Span] = ()) -> None:
        self.values = torch.zeros(0, dtype=torch.float64) if values is None else values
        length = self.values.numel()
        check_buffer_spec(length, counters)
        self.counters = tuple(counters)
        self._mask: torch.Tensor | None = None
        if self.counters:
            self._mask = torch.zeros(length, dtype=torch.bool)
            for start, span in self.counters:
                self._mask[start : start + span] = True

    def __len__(self) -> int:
        return self.values.numel()

    def apply(self, delta_sum: torch.Tensor | None, n: int) -> None:
        """Add the summed change of ``n`` applied pushes: averaged over ``n``, but summed over
        the counter spans. ``delta_sum`` is lent (None: no push changed anything)."""
        if delta_sum is None:
            return
        if n <= 1:  # no division: one push's change lands exactly
            self.values.add_(delta_sum)
            return
        change = delta_sum / n
        if self._mask is not None:
            change[self._mask] = delta_sum[self._mask]
        self.values.add_(change)

    def snapshot(self) -> bytes:
        """The current values as wire bytes (a copy: small, taken under the job's lock)."""
        return encode_buffers(self.values) if len(self) else b""
