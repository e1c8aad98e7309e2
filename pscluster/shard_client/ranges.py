"""What the shard client moves: a job's shard ranges, a pulled snapshot, what goes with a push."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pscluster.server.tables.rows import RowBlockInfo
from pscluster.v1 import coordinator_pb2 as co_pb2


@dataclass(frozen=True)
class ShardRange:
    """One shard's part of a job: its range of the float32 parameter vector and of the
    float64 buffer vector (BatchNorm statistics and such; empty when the model has none)."""

    address: str
    start: int
    length: int
    buffer_start: int = 0
    buffer_length: int = 0

    @classmethod
    def from_proto(cls, r: co_pb2.ShardRange) -> ShardRange:
        return cls(r.address, r.start, r.length, r.buffer_start, r.buffer_length)


def vector_sizes(ranges: Sequence[ShardRange]) -> tuple[int, int]:
    """The lengths of the parameter and buffer vectors the ranges cover."""
    size = max((r.start + r.length for r in ranges), default=0)
    buffer_size = max((r.buffer_start + r.buffer_length for r in ranges), default=0)
    return size, buffer_size


@dataclass
class Snapshot:
    """Parameters as pulled, with each shard's version and clock (what a push refers to)."""

    values: torch.Tensor  # float32, the whole parameter vector
    buffers: torch.Tensor  # float64, the whole buffer vector (empty when the model has none)
    versions: list[int]  # per shard, in range order
    clocks: list[int]
    # The longest any shard held the pull for the consistency mode (the shards are pulled in
    # parallel, so this is what the puller spent waiting on other workers).
    waited_seconds: float = 0.0
    # The local steps per push the job's consistency asks for, as the shard holding the newest
    # revision says (mode "auto" revises it; the shards take a switch a moment apart).
    local_steps: int = 0


@dataclass(frozen=True)
class PushExtras:
    """What goes with a push beside the gradient."""

    buffer_delta: torch.Tensor | None = None  # float64, the whole buffer vector's change
    grad_scale: float = 1.0  # fp16 loss scaling: the gradient was multiplied by this
    # Per shard index, the row blocks of the job's tables that shard owns and their bytes
    # (pscluster.server.tables.rows.encode_rows); shards not in it get none.
    rows: Mapping[int, tuple[Sequence[RowBlockInfo], bytes]] = field(default_factory=dict)
    # 0: the update is a gradient; n > 0: the change of n local optimizer steps, over lr.
    local_steps: int = 0

    def buffer_slice(self, r: ShardRange) -> bytes:
        """A shard's slice of the buffers' change; nothing when it did not change (constant
        buffers cost no bytes per push)."""
        delta = self.buffer_delta
        if delta is None or not r.buffer_length:
            return b""
        part = delta[r.buffer_start : r.buffer_start + r.buffer_length]
        if not bool(part.any()):
            return b""
        return part.numpy().astype("<f8", copy=False).tobytes()
