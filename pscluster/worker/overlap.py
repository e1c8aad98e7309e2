"""Push each part of the gradient while backward is still computing the rest.

Autograd produces gradients from the last layer to the first. A hook on each parameter
(``register_post_accumulate_grad_hook``) copies its gradient into the flat vector the push is
made of as soon as it is final, and marks the buckets (``bucket_bytes`` slices of each shard's
range) it completes. Each shard's push is a stream that sends its buckets from the last to the
first, each as soon as it is complete, so the bytes of the last layers are on the wire, and
received by the shard, while backward runs for the first ones: DDP's bucketed all-reduce
(Li et al., VLDB 2020), Poseidon's wait-free backpropagation (Zhang et al., ATC 2017), for a
parameter server. The shard puts each bucket in place (PushHeader.bucket_bytes) and decides
on the push once all of it is there, as for any push: the update is exactly the one a push
sent after backward would carry.

A batch whose loss or gradient turns out non-finite is found only once backward is done; its
streams are then abandoned mid-way (:meth:`GradientStream.abort`, and the calls cancelled) and
the shards, whose streams break off, apply nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pscluster.model.layout import ParamLayout
from pscluster.transport import framing, wire

# A few MB per bucket, as DDP's default 25 MB bucket is for GPUs: small enough that the first
# is ready early in backward, large enough that a bucket is many chunks' worth of bytes.
DEFAULT_BUCKET_BYTES = 4 << 20


@dataclass(frozen=True)
class _Bucket:
    start: int  # in values, of the flat vector
    end: int


class GradientStream:
    """The flat gradient of one batch, filled by backward hooks, bucket by bucket.

    ``ranges`` are the shards' (start, length) slices of the flat vector. Use: :meth:`arm`
    before backward, :meth:`chunks` (one reader per shard, other threads) while it runs,
    :meth:`finish` after it, then :meth:`seal` (the gradient is finite) or :meth:`abort`.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        ranges: Sequence[tuple[int, int]],
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        self.bucket_values = max(1, bucket_bytes // 4)
        self.flat = torch.zeros(layout.size, dtype=torch.float32)
        self._cond = threading.Condition()
        self._buckets = [_buckets(start, length, self.bucket_values) for start, length in ranges]
        everything = [b for shard in self._buckets for b in shard]
        params = dict(model.named_parameters())
        self._slots = [(s, params[s.name]) for s in layout.slots]
        # Per slot, the buckets it overlaps; per bucket, how many slots it waits for.
        self._covers: list[list[_Bucket]] = [
            [b for b in everything if b.start < s.offset + s.numel and s.offset < b.end]
            for s, _ in self._slots
        ]
        self._needs = {b: sum(b in c for c in self._covers) for b in everything}
        self._pending: dict[_Bucket, int] = {}
        self._done: list[bool] = []
        self._aborted = False
        self._armed = False
        self._sealed = False
        self._generation = 0  # batches armed: a stream reads only its own batch
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._hook(i))  # type: ignore[no-untyped-call]
            for i, (_, p) in enumerate(self._slots)
            if p.requires_grad  # a frozen one is zeros: finish() fills it
        ]

    def bucket_bytes(self) -> int:
        return self.bucket_values * 4

    def arm(self) -> None:
        """A new batch: no bucket is ready, no slot copied."""
        with self._cond:
            self._pending = dict(self._needs)
            self._done = [False] * len(self._slots)
            self._aborted = False
            self._armed = True
            self._sealed = False
            self._generation += 1

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def copied(param: torch.Tensor) -> None:
            self._copy(index, param.grad)

        return copied

    def _copy(self, index: int, grad: torch.Tensor | None) -> None:
        if not self._armed:
            return  # a backward outside a streamed step (evaluation has none)
        slot, _ = self._slots[index]
        dst = self.flat[slot.offset : slot.offset + slot.numel]
        if grad is None:
            dst.zero_()
        else:
            dst.copy_(grad.detach().reshape(-1))
        with self._cond:
            if not self._armed or self._done[index]:
                return  # a backward outside a streamed step, or copied already
            self._done[index] = True
            for bucket in self._covers[index]:
                self._pending[bucket] -= 1
            self._cond.notify_all()

    def finish(self) -> torch.Tensor:
        """Backward is over: a parameter whose hook never ran (not used, or frozen) counts
        as zeros. The whole flat gradient, to check before :meth:`seal` or :meth:`abort`."""
        for i, (_, param) in enumerate(self._slots):
            if not self._done[i]:
                self._copy(i, param.grad)
        with self._cond:
            self._armed = False
        return self.flat

    def seal(self) -> None:
        """The gradient is good: send each shard's last bucket (the first of its range), which
        every stream holds back until now, so that no shard receives a whole push the worker
        would have abandoned."""
        with self._cond:
            self._sealed = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._armed = False
            self._cond.notify_all()

    def chunks(self, shard: int, chunk_bytes: int) -> Iterator[bytes]:
        """Shard ``shard``'s range of the batch armed last as data chunks, bucket by bucket
        from the last, each sent once complete; they stop short if the batch is abandoned
        (its calls are cancelled) or another is armed."""
        with self._cond:
            generation = self._generation
        return self._chunks(shard, chunk_bytes, generation)

    def _chunks(self, shard: int, chunk_bytes: int, generation: int) -> Iterator[bytes]:
        buckets = self._buckets[shard]
        for bucket in reversed(buckets):
            with self._cond:
                while self._blocked(bucket, generation, last=bucket is buckets[0]):
                    self._cond.wait()
                if self._aborted or generation != self._generation:
                    return
            values = self.flat[bucket.start : bucket.end]
            yield from framing.frames(wire.byte_view(values), chunk_bytes)

    def _blocked(self, bucket: _Bucket, generation: int, *, last: bool) -> bool:
        live = generation == self._generation and not self._aborted
        return live and (self._pending[bucket] > 0 or (last and not self._sealed))

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()


def _buckets(start: int, length: int, size: int) -> list[_Bucket]:
    return [_Bucket(s, min(s + size, start + length)) for s in range(start, start + length, size)]
