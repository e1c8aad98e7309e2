"""Row gradients on the wire: what a push carries for a job's tables after its dense payload.

Each block is one table's ``count`` int64 ids followed by ``count * dim`` values of the
block's dtype (float32, or half precision to halve the bytes). Workers encode with
:func:`encode_rows`; shards decode with :func:`decode_rows`, which checks every size before
anything is read, and the job checks the ids against its tables before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from pscluster.errors import InvalidArgument
from pscluster.server.tables.spec import TableSpec
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32 = common_pb2.DTYPE_FLOAT32


class _HasTables(Protocol):
    @property
    def tables(self) -> Sequence[TableSpec]: ...


@dataclass(frozen=True)
class RowBlockInfo:
    """A block as the push header announces it."""

    table: int
    count: int
    dtype: int = F32


@dataclass
class RowGrads:
    """Per table index, (ids int64 [k], gradients float32 [k, dim]); owned, not lent."""

    blocks: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(ids.numel() for ids, _ in self.blocks.values())

    def scale_(self, factor: float) -> None:
        for _, grads in self.blocks.values():
            grads.mul_(factor)

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(g).all()) for _, g in self.blocks.values())

    @classmethod
    def merged(cls, parts: Sequence[RowGrads]) -> RowGrads:
        """The blocks of every part, concatenated per table (repeated ids are summed when
        applied)."""
        tables = sorted({t for part in parts for t in part.blocks})
        out = cls()
        for t in tables:
            held = [part.blocks[t] for part in parts if t in part.blocks]
            out.blocks[t] = (torch.cat([i for i, _ in held]), torch.cat([g for _, g in held]))
        return out


def block_bytes(info: RowBlockInfo, dim: int) -> int:
    return info.count * (8 + dim * wire.itemsize(info.dtype))


def rows_bytes(infos: Sequence[RowBlockInfo], dims: Sequence[int]) -> int:
    """The bytes the blocks announce (InvalidArgument for a table the job does not have)."""
    total = 0
    for info in infos:
        if info.table >= len(dims):
            raise InvalidArgument(
                f"a row block names table {info.table}; the job has {len(dims)} table(s)"
            )
        total += block_bytes(info, dims[info.table])
    return total


def decode_rows(
    infos: Sequence[RowBlockInfo], dims: Sequence[int], data: bytes | bytearray
) -> RowGrads:
    """The blocks of ``data`` (exactly :func:`rows_bytes` long) as float32 row gradients."""
    expected = rows_bytes(infos, dims)
    if len(data) != expected:
        raise InvalidArgument(
            f"the row blocks are {len(data)} bytes; the header announces {expected}"
        )
    seen: set[int] = set()
    out = RowGrads()
    offset = 0
    for info in infos:
        if info.table in seen:
            raise InvalidArgument(f"table {info.table} has two row blocks in one push")
        seen.add(info.table)
        dim = dims[info.table]
        ids = torch.frombuffer(bytearray(data[offset : offset + 8 * info.count]), dtype=torch.int64)
        offset += 8 * info.count
        size = info.count * dim * wire.itemsize(info.dtype)
        values = wire.decode(data[offset : offset + size], info.dtype, info.count * dim)
        offset += size
        out.blocks[info.table] = (ids, values.reshape(info.count, dim))
    return out


def encode_rows(
    blocks: Mapping[int, tuple[torch.Tensor, torch.Tensor]], dtype: int = F32
) -> tuple[list[RowBlockInfo], bytes]:
    """The inverse of :func:`decode_rows`: the headers' blocks and the bytes that follow."""
    infos, parts = [], []
    for table in sorted(blocks):
        ids, grads = blocks[table]
        infos.append(RowBlockInfo(table, ids.numel(), dtype))
        parts.append(ids.to(device="cpu", dtype=torch.int64).contiguous().numpy().tobytes())
        parts.append(bytes(wire.encode(grads.reshape(-1), dtype)))
    return infos, b"".join(parts)


class SplitStream:
    """A push's chunks cut in two: the dense payload (``head``, exactly ``head_bytes``) and
    what follows (:meth:`rest`), so that each part is received as before."""

    def __init__(self, chunks: Iterable[bytes | memoryview], head_bytes: int) -> None:
        self._chunks = iter(chunks)
        self._left = head_bytes
        self._carry = b""

    def head(self) -> Iterator[bytes | memoryview]:
        while self._left > 0:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            view = memoryview(chunk).cast("B")
            if len(view) > self._left:
                self._carry = bytes(view[self._left :])  # before the chunk's memory is reused
                view, self._left = view[: self._left], 0
                yield view
                return
            self._left -= len(view)
            yield view

    def rest(self, limit: int) -> bytearray:
        """Everything after the head; InvalidArgument past ``limit`` bytes."""
        out = bytearray(self._carry)
        for chunk in self._chunks:
            out += chunk
            if len(out) > limit:
                raise InvalidArgument(f"the push carries more than the announced {limit} bytes")
        return out


def initial_tables(
    config: _HasTables, rest: Callable[[int], bytearray] | None
) -> list[torch.Tensor | None]:
    """The given initial rows of each table, read from what follows the dense values of an
    InitJob stream (``rest``); None for a table whose rows are drawn on the shard."""
    sizes = [t.local_rows * t.dim * 4 if t.initial_given else 0 for t in config.tables]
    expected = sum(sizes)
    data = rest(expected) if rest is not None else bytearray()
    if len(data) != expected:
        raise InvalidArgument(
            f"InitJob carries {len(data)} bytes of table rows; the given tables need {expected}"
        )
    out: list[torch.Tensor | None] = []
    offset = 0
    for table, size in zip(config.tables, sizes, strict=True):
        if not table.initial_given:
            out.append(None)
            continue
        if size == 0:  # a shard that owns none of a small table's ids
            out.append(torch.zeros((0, table.dim), dtype=torch.float32))
            continue
        rows = torch.frombuffer(data, dtype=torch.float32, offset=offset, count=size // 4)
        out.append(rows.reshape(table.local_rows, table.dim))
        offset += size
    return out
