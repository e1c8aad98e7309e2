"""Plain data the shard's logic works with, decoded from (and encoded to) the protos by the
servicer; nothing here knows about gRPC."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from pscluster.model.optimizer import OptimizerSpec
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.snapshots import SnapshotLease
from pscluster.server.tables.job_tables import TableStats
from pscluster.server.tables.rows import RowBlockInfo
from pscluster.server.tables.spec import TableSpec


@dataclass(frozen=True)
class JobConfig:
    job_id: str
    start: int
    length: int
    mode: str
    staleness: int
    optimizer: OptimizerSpec
    codec: str = "none"  # the only codec this job's pushes may use
    # sync: a step closes once all members but this many have pushed (Chen et al. 2016).
    backup_workers: int = 0
    # async/ssp: a push's gradient is divided by (version staleness + 1) (Zhang et al. 2016).
    staleness_aware_lr: bool = False
    # The job's buffer range on this shard (pscluster.server.job_buffers); its initial values
    # are state, not config: they travel beside it (ShardJob's ``buffers``).
    buffer_start: int = 0
    buffer_length: int = 0
    # (start, length) spans of the buffer range that count (summed, not averaged, in sync).
    counters: tuple[tuple[int, int], ...] = ()
    # Embedding tables this shard holds rows of (pscluster.server.tables), and their optimizer.
    tables: tuple[TableSpec, ...] = ()
    sparse_optimizer: SparseOptimizerSpec | None = None
    # (start, length) spans of the range whose exactly-zero initial values stay exactly zero
    # (pscluster.server.zero_mask: a pruned model's fine-tune).
    hold_zeros: tuple[tuple[int, int], ...] = ()
    # Increases with every move of the job's ranges between shards (live re-layout): requests
    # naming another nonzero one are refused "layout moved" (pscluster.server.layout_gate).
    # Checkpoints written before it have none: 0.
    layout_generation: int = 0
    # The local steps a worker is to take between a pull and a push (0 or 1: one), as mode
    # "auto" sets it; pulls say it, so that the workers follow it.
    local_steps: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-able, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobConfig:
        """Also reads configs written before buffers (no buffer fields: a job without any)."""
        spec = dict(data["optimizer"])
        spec["betas"] = tuple(spec["betas"])
        counters = tuple((int(start), int(length)) for start, length in data.get("counters", ()))
        zeros = tuple((int(start), int(length)) for start, length in data.get("hold_zeros", ()))
        tables = tuple(TableSpec.from_json(t) for t in data.get("tables", ()))
        sparse = data.get("sparse_optimizer")
        sparse_spec = None
        if sparse is not None:
            sparse_spec = SparseOptimizerSpec(**{**sparse, "betas": tuple(sparse["betas"])})
        return cls(
            **{
                **data,
                "optimizer": OptimizerSpec(**spec),
                "counters": counters,
                "hold_zeros": zeros,
                "tables": tables,
                "sparse_optimizer": sparse_spec,
            }
        )


@dataclass(frozen=True)
class PushHeader:
    job_id: str
    worker_id: str
    seq: int
    base_version: int
    base_clock: int
    length: int
    dtype: int
    batch_size: int = 0
    codec: str = "none"
    payload_bytes: int = 0  # 0 with codec "none": length * itemsize(dtype)
    # fp16 loss scaling: the payload is the gradient times this (0 means 1).
    grad_scale: float = 0.0
    # float64 little-endian change to the job's buffers; empty means no change.
    buffer_delta: bytes = field(default=b"", repr=False)
    # Row gradients of the job's tables, after the dense payload (pscluster.server.tables.rows).
    rows: tuple[RowBlockInfo, ...] = ()
    # 0: the payload in order; else buckets of this many bytes, last first (raw float32).
    bucket_bytes: int = 0
    # 0: a gradient for the job's optimizer; n > 0: the change of n local optimizer steps
    # on the worker divided by lr, which the shard adds (see JobState.apply).
    local_steps: int = 0

    @property
    def scale(self) -> float:
        """The divisor of the decoded payload: ``grad_scale``, with 0 meaning 1."""
        return self.grad_scale or 1.0


class Outcome(enum.Enum):
    UNKNOWN = "unknown"  # a retry of a push older than the last one remembered
    APPLIED = "applied"
    BUFFERED = "buffered"
    STALE = "stale"
    LATE = "late"  # sync with backup workers: the step closed without this push; dropped
    # sync: the worker's earlier push holds its place in the open step; this one not taken
    ALREADY_PUSHED = "already_pushed"

    @property
    def taken(self) -> bool:
        """The push's gradient is in the parameters or held for them (its sender's clock
        moves on, and so may its compression state)."""
        return self in (Outcome.APPLIED, Outcome.BUFFERED)


@dataclass(frozen=True)
class PushResult:
    outcome: Outcome
    version: int
    clock: int
    duplicate: bool = False
    reason: str = ""
    next_version: int = 0  # the min_version of the sender's next pull (0: none)


@dataclass(frozen=True)
class PullSnapshot:
    """What a pull streams: the values of one version as raw bytes of the wire dtype.

    Use it as a context manager: leaving it ends the hold on the values.
    """

    version: int
    clock: int
    start: int
    length: int
    dtype: int
    payload: SnapshotLease
    waited_seconds: float = 0.0  # how long the consistency mode held the pull
    buffers: bytes = b""  # the job's buffers at the same version, float64 little-endian
    revision: int = 0  # the consistency revision in force
    local_steps: int = 0  # the local steps it asks the workers to take per push

    def __enter__(self) -> PullSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.payload.release()

    def to_bytes(self) -> bytes:
        """The whole payload at once (for tests and small slices)."""
        return b"".join(self.payload.chunks(1 << 20, bytes))


@dataclass
class JobStats:
    """Field names match ``common_pb2.ShardJobStats`` so the servicer maps it one to one."""

    job_id: str
    start: int
    length: int
    version: int
    clock: int
    pushes_received: int
    pushes_applied: int
    pushes_rejected: dict[str, int]
    pulls: int
    bytes_pushed: int
    bytes_pulled: int
    bytes_pushed_raw: int
    staleness: dict[int, int]
    clock_staleness: dict[int, int]
    max_clock_lead: int
    members: list[str]
    worker_clocks: dict[str, int]
    waiting_for: list[str]
    checksum: float
    last_update_unix: float
    steps_applied: int
    excluded: list[str]
    pushes_duplicate: int = 0
    durable: bool = False  # the job is logged (write-ahead log and checkpoints)
    checkpoint_version: int = 0  # the version its newest checkpoint holds
    records_replayed: int = 0  # logged records replayed when the shard started
    tables: list[TableStats] = field(default_factory=list)
