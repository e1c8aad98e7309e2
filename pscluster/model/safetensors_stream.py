"""A safetensors file written as a stream: the header first (every entry's dtype and shape are
known ahead), then each entry's bytes as they are produced.

A model with a 50M-row table is 3 GB: built whole in memory it would be held twice (the
tensors and the serialized file) by the coordinator and again by the client. Streamed, each
table is read from the shards a block of rows at a time and written (or sent) as it comes.
The bytes are a standard safetensors file: ``safetensors.torch.load`` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pscluster.model.state import dtype_name


@dataclass(frozen=True)
class Entry:
    """One tensor of the file; ``blocks`` yields its contiguous pieces in order."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty(0, dtype=self.dtype).element_size()

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> Entry:
        held = tensor.detach().to("cpu").contiguous()
        return cls(name, held.dtype, tuple(held.shape), lambda: iter([held]))


def header(entries: Sequence[Entry]) -> bytes:
    """The length-prefixed JSON header, padded to 8 bytes as safetensors writes it."""
    meta: dict[str, object] = {}
    offset = 0
    for e in sorted(entries, key=lambda e: e.name):  # safetensors lays entries out by name
        meta[e.name] = {
            "dtype": dtype_name(e.dtype),
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def stream(entries: Sequence[Entry]) -> Iterator[bytes | memoryview]:
    """The file's bytes: the header, then each entry's blocks (ValueError if an entry's
    blocks do not add up to its shape: the file would be corrupt)."""
    yield header(entries)
    for e in sorted(entries, key=lambda e: e.name):
        written = 0
        for block in e.blocks():
            data = block.detach().to("cpu", e.dtype).contiguous().reshape(-1)
            view = data.view(torch.uint8).numpy().data if data.numel() else memoryview(b"")
            written += len(view)
            yield view
        if written != e.nbytes:
            raise ValueError(
                f"entry {e.name!r} produced {written} bytes, its shape needs {e.nbytes}"
            )


def rechunk(parts: Iterator[bytes | memoryview], size: int) -> Iterator[bytes]:
    """``parts`` as pieces of ``size`` bytes (the last may be shorter)."""
    pending = bytearray()
    for part in parts:
        pending += part
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)
