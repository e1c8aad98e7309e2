"""A model's buffers as the shards keep them: one float64 vector beside the parameters.

Buffers are the state a model changes in ``forward`` rather than through gradients: BatchNorm's
running mean and variance and its ``num_batches_tracked``, or any tensor a user registers with
``register_buffer``. They must be trained like the parameters (a model evaluated with the
initial statistics is broken), so the shards hold them too: each shard keeps a range of this
vector, workers send their change with every push, and the shards merge the changes (see
``ShardJobConfig`` in parameter_server.proto).

float64 holds every float32/float16/bfloat16 value and every integer up to 2**53 exactly, so
one vector carries both kinds, and a worker's change ``new - pulled`` added back on a shard
gives ``new`` again bit for bit (sync with one worker stays exact). Integer buffers are
*counters*: a sync step adds every worker's change instead of their average, so
``num_batches_tracked`` counts every batch of every worker. Boolean buffers (masks) and
non-persistent buffers (not in the ``state_dict``) are left out: they are constants the model
rebuilds itself, or that travel once in the initial state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pscluster.errors import InvalidArgument

# dtype names as they travel in ParamInfo.dtype (torch's names without "torch.").
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str, what: str) -> torch.dtype:
    if name not in DTYPES:
        raise InvalidArgument(f"{what} has dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class BufferSlot:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def counter(self) -> bool:
        """Integer buffers count (summed over a sync step); floating ones are averaged."""
        return not self.dtype.is_floating_point


def shared_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The buffers the shards keep, in order: persistent, floating point or integer."""
    keys = set(module.state_dict().keys())
    return [
        (name, b)
        for name, b in module.named_buffers()
        if name in keys and dtype_name(b.dtype) in DTYPES
    ]


class BufferLayout:
    def __init__(self, entries: Sequence[tuple[str, Sequence[int], torch.dtype]]) -> None:
        slots: list[BufferSlot] = []
        offset = 0
        for name, shape, dtype in entries:
            slot = BufferSlot(name, tuple(int(d) for d in shape), dtype, offset)
            slots.append(slot)
            offset += slot.numel
        self.slots = tuple(slots)
        self.size = offset

    @classmethod
    def of_module(cls, module: nn.Module) -> BufferLayout:
        return cls([(n, tuple(b.shape), b.dtype) for n, b in shared_buffers(module)])

    def counter_spans(self) -> list[tuple[int, int]]:
        """(start, length) of every counter in the vector, in order."""
        return [(s.offset, s.numel) for s in self.slots if s.counter]

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The layout's entries of ``tensors`` (a state_dict) as one float64 vector."""
        flat = torch.empty(self.size, dtype=torch.float64)
        for slot in self.slots:
            if slot.name not in tensors:
                raise InvalidArgument(f"state has no buffer {slot.name!r}")
            t = tensors[slot.name]
            if tuple(t.shape) != slot.shape:
                raise InvalidArgument(
                    f"buffer {slot.name!r} has shape {tuple(t.shape)}, expected {slot.shape}"
                )
            flat[slot.offset : slot.offset + slot.numel] = t.detach().reshape(-1).to("cpu")
        return flat

    def read(self, module: nn.Module) -> torch.Tensor:
        """The module's current buffers as one float64 vector (on the CPU)."""
        return self.flatten(dict(module.named_buffers()))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The vector as state_dict entries, each in its own dtype."""
        if flat.numel() != self.size:
            raise InvalidArgument(f"buffers have {flat.numel()} values, layout needs {self.size}")
        return {
            s.name: flat[s.offset : s.offset + s.numel].reshape(s.shape).to(s.dtype).clone()
            for s in self.slots
        }

    def load_into(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Copy the vector into the module's buffers (on whatever device they live)."""
        if not self.slots:
            return
        buffers = dict(module.named_buffers())
        with torch.no_grad():
            for slot in self.slots:
                src = flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
                buffers[slot.name].copy_(src.to(slot.dtype))
