"""The flat parameter vector: which state_dict entries it holds, in which order, at which offset.

Shards see one float32 vector per job; only the layout knows it is a model. Trainable
parameters are laid out in ``named_parameters()`` order; buffers (BatchNorm statistics, ...)
have their own float64 vector (:mod:`pscluster.model.buffers`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pscluster.errors import InvalidArgument


@dataclass(frozen=True)
class ParamSlot:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ParamLayout:
    def __init__(self, entries: Sequence[tuple[str, Sequence[int]]]) -> None:
        slots: list[ParamSlot] = []
        offset = 0
        seen: set[str] = set()
        for name, shape in entries:
            if name in seen:
                raise InvalidArgument(f"parameter {name!r} appears twice in the layout")
            seen.add(name)
            slot = ParamSlot(name, tuple(int(d) for d in shape), offset)
            slots.append(slot)
            offset += slot.numel
        self.slots = tuple(slots)
        self.size = offset

    @classmethod
    def of_module(cls, module: nn.Module) -> ParamLayout:
        """The module's trainable parameters: frozen ones (``requires_grad=False``) never
        change, so they are neither pulled nor pushed; they travel once, in the job's initial
        state, and come back in the fetched model as they went."""
        return cls([(n, tuple(p.shape)) for n, p in module.named_parameters() if p.requires_grad])

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the layout's entries of ``tensors`` into one float32 vector."""
        flat = torch.empty(self.size, dtype=torch.float32)
        for slot in self.slots:
            if slot.name not in tensors:
                raise InvalidArgument(f"state has no entry {slot.name!r}")
            t = tensors[slot.name]
            if tuple(t.shape) != slot.shape:
                raise InvalidArgument(
                    f"{slot.name!r} has shape {tuple(t.shape)}, expected {slot.shape}"
                )
            flat[slot.offset : slot.offset + slot.numel] = t.detach().reshape(-1).to("cpu")
        return flat

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.numel() != self.size:
            raise InvalidArgument(f"vector has {flat.numel()} values, layout needs {self.size}")
        return {
            s.name: flat[s.offset : s.offset + s.numel].reshape(s.shape).clone() for s in self.slots
        }

    def load_into(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Copy the vector into the module's parameters (on whatever device they live); a
        vector they are views of (:meth:`bind`) is theirs already and is not copied."""
        params = dict(module.named_parameters())
        with torch.no_grad():
            for slot in self.slots:
                p = params[slot.name]
                src = flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
                if p.data_ptr() != src.data_ptr():
                    p.copy_(src, non_blocking=True)

    def bind(self, module: nn.Module) -> torch.Tensor | None:
        """Make the module's parameters views of one flat vector holding their values, and
        return it; None (nothing changed) unless every one is a float32 CPU tensor.

        A pull received into the vector is then the model itself: a worker holds one copy of
        the parameters instead of two (the pulled vector and the module it was copied into,
        640 MB each for a 160M-parameter model) and copies nothing per step. Only for a
        worker that never changes its parameters between pulls (one step per push): local
        SGD steps them and needs the pulled start apart.
        """
        params = dict(module.named_parameters())
        mine = [params[slot.name] for slot in self.slots]
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in mine):
            return None
        flat = self.flatten(params)
        for slot in self.slots:
            # .data swaps the storage under the same Parameter: optimizers, hooks and the
            # module's attributes still hold the object they held.
            params[slot.name].data = flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
        return flat

    def gradient(self, module: nn.Module, out: torch.Tensor | None = None) -> torch.Tensor:
        """The module's gradients as one flat float32 vector (zeros where a grad is None)."""
        params = dict(module.named_parameters())
        device = next(iter(params.values())).device if params else torch.device("cpu")
        flat = (
            out if out is not None else torch.empty(self.size, dtype=torch.float32, device=device)
        )
        for slot in self.slots:
            g = params[slot.name].grad
            dst = flat[slot.offset : slot.offset + slot.numel]
            if g is None:
                dst.zero_()
            else:
                dst.copy_(g.reshape(-1))
        return flat
