"""The coordinator's durable state behind one interface: jobs, their steps and evaluations.

Everything a restarted coordinator needs to list finished jobs, report their metrics and
resume running ones lives here, leases included (so that a worker training through a
coordinator restart keeps its lease), and the registered shards; worker and shard liveness do
not (they register again).
Blobs (datasets, models) are files, see :mod:`pscluster.coordinator.blobs`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pscluster.coordinator.writes import Write

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


@dataclass(frozen=True)
class ShardSlice:
    """The range of the job's flat vector that one shard holds."""

    address: str
    start: int
    length: int
    # The registered shard holding it ("" with a static PSC_SHARDS list): when that shard
    # comes back at a new address, the slice follows it (:meth:`JobStore.readdress_shard`).
    shard_id: str = ""


@dataclass(frozen=True)
class ShardRecord:
    """A registered shard as the store keeps it; its liveness is not kept (shards register
    again every heartbeat, as workers do)."""

    shard_id: str
    address: str
    registered_unix: float


@dataclass(frozen=True)
class MoveRecord:
    """A move under way: the job's slices and layout generation once it is done. Stored
    before any shard of the new layout adopts, and removed once the job's record says where
    it went, so that a coordinator that stops in between finishes or undoes the move when it
    starts again (:mod:`pscluster.coordinator.restore`)."""

    job_id: str
    layout_generation: int
    shards: list[ShardSlice]


@dataclass
class JobRecord:
    job_id: str
    name: str
    spec: bytes  # serialized pscluster.v1.JobSpec, with partitions and shards made explicit
    mode: str
    epochs: int
    partitions: int  # per epoch
    num_params: int
    shards: list[ShardSlice]
    state: str = PENDING
    created_unix: float = 0.0
    started_unix: float = 0.0
    finished_unix: float = 0.0
    error: str = ""
    status_message: str = ""
    epoch: int = 0  # current epoch; == epochs once training is done
    done_partitions: list[int] = field(default_factory=list)  # of the current epoch
    pending_evals: list[int] = field(default_factory=list)  # epochs whose evaluation is owed
    test_accuracy: float = -1.0
    last_loss: float = -1.0
    steps: int = 0
    samples: int = 0  # training samples reported in steps
    generation: int = 0  # last membership generation sent to the shards
    final_stats: bytes = b""  # serialized pscluster.v1.JobMetrics (shard counters only)
    # A job reading a data source: its serialized pscluster.v1.DataShape, as the first worker
    # found it (b"" until then, and for uploaded data).
    data_shape: bytes = b""
    # Increases with every move of the job's ranges between shards (ScaleShards), which
    # rewrites ``shards``; the shards and the job's plan carry it (pscluster.coordinator.moves).
    layout_generation: int = 0


# The identity of a job is fixed at submission; the rest may change (its shards only with its
# layout_generation, when ScaleShards moves it).
_FIXED = {"job_id", "name", "spec", "mode", "epochs", "partitions", "num_params"}
MUTABLE_FIELDS = (
    frozenset(f.name for f in dataclasses.fields(JobRecord)) - _FIXED - {"created_unix"}
)


@dataclass(frozen=True)
class StepRecord:
    step: int  # job-wide, 1-based, in order of arrival; ignored on append
    loss: float
    samples: int
    worker_id: str
    epoch: int
    unix_time: float


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    test_accuracy: float  # -1 when the job does not measure accuracy
    test_loss: float
    unix_time: float
    samples: int
    # Everything the evaluation measured ("loss" and the job's metric).
    metrics: dict[str, float] = field(default_factory=dict)
    # Each shard's version of the parameters evaluated (plan order): the final model saved
    # must be of exactly these versions.
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class EventRecord:
    """Something that happened to a job (a straggler flagged, a lease split, ...)."""

    unix_time: float
    kind: str
    worker_id: str
    message: str


@dataclass(frozen=True)
class LeaseRecord:
    """A lease as granted (the fields of :class:`pscluster.coordinator.lease_values.Lease`)."""

    lease_id: str
    job_id: str
    worker_id: str
    kind: str
    epoch: int
    partition: int
    partitions: int
    first_batch: int
    end_batch: int


def readdress(piece: ShardSlice, shard_id: str, address: str) -> ShardSlice:
    """``piece`` at ``address`` if shard ``shard_id`` holds it, else as it is."""
    if piece.shard_id != shard_id or piece.address == address:
        return piece
    return dataclasses.replace(piece, address=address)


def check_changes(changes: dict[str, Any]) -> None:
    """Refuse a write of an unknown or fixed field (a programming error, not user input)."""
    bad = sorted(set(changes) - MUTABLE_FIELDS)
    if bad:
        raise ValueError(f"cannot update job fields {bad}; mutable: {sorted(MUTABLE_FIELDS)}")


class JobStore(ABC):
    """Thread-safe: every method may be called from any gRPC handler thread."""

    @abstractmethod
    def create_job(self, job: JobRecord) -> None:
        """Store a new job; AlreadyExists if its id is taken."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self, state: str | None = None) -> list[JobRecord]:
        """Every job (or those in ``state``), oldest first."""

    @abstractmethod
    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        """Change some fields (others are untouched) and return the new record; NotFound."""

    @abstractmethod
    def append_steps(self, job_id: str, steps: Sequence[StepRecord]) -> JobRecord:
        """Number the steps after the job's last one, store them and update the job's step
        count, last loss and samples; returns the new record. NotFound if the job is unknown.
        """

    @abstractmethod
    def steps(self, job_id: str, after: int = 0) -> list[StepRecord]:
        """The job's steps numbered above ``after``, in order."""

    @abstractmethod
    def steps_by_worker(self, job_id: str) -> dict[str, int]: ...

    @abstractmethod
    def record_epoch(self, job_id: str, result: EpochRecord) -> JobRecord:
        """Store an evaluation (replacing one of the same epoch); the job's test_accuracy
        follows the evaluation of the latest epoch. NotFound if the job is unknown.
        """

    @abstractmethod
    def epochs(self, job_id: str) -> list[EpochRecord]:
        """The job's evaluations, by epoch."""

    def latest_epoch(self, job_id: str) -> EpochRecord | None:
        """The evaluation of the job's latest evaluated epoch, if any."""
        evaluated = self.epochs(job_id)
        return evaluated[-1] if evaluated else None

    @abstractmethod
    def append_event(self, job_id: str, event: EventRecord) -> None:
        """Store an event of the job; NotFound if the job is unknown."""

    @abstractmethod
    def events(self, job_id: str) -> list[EventRecord]:
        """The job's events, oldest first."""

    @abstractmethod
    def add_dropped(self, job_id: str, batches: Mapping[str, int]) -> None:
        """Add batches the job's workers dropped, by reason, to its totals; NotFound if the
        job is unknown."""

    @abstractmethod
    def dropped(self, job_id: str) -> dict[str, int]:
        """The batches the job's workers dropped, by reason, over its whole run."""

    @abstractmethod
    def save_leases(self, leases: Sequence[LeaseRecord]) -> None:
        """Replace the stored leases with ``leases`` (every lease outstanding now)."""

    @abstractmethod
    def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order, all or none (one transaction): the scheduling core's
        decisions, batched by the store writer. Writes about a job that is gone are skipped
        (its leases and progress went with it)."""

    @abstractmethod
    def leases(self) -> list[LeaseRecord]:
        """The leases outstanding when :meth:`save_leases` was last called."""

    @abstractmethod
    def save_shard(self, shard: ShardRecord) -> None:
        """Store a registered shard, or its new address (keyed by its id)."""

    @abstractmethod
    def shards(self) -> list[ShardRecord]:
        """Every registered shard, by id."""

    @abstractmethod
    def save_shards_in_use(self, shard_ids: Sequence[str]) -> None:
        """Remember the shards ScaleShards chose (ids), for a restarted coordinator."""

    @abstractmethod
    def shards_in_use(self) -> list[str] | None:
        """The shards ScaleShards last chose, sorted; None when it never ran (it never
        chooses none)."""

    @abstractmethod
    def begin_move(self, move: MoveRecord) -> None:
        """Record a move under way (replacing one of the same job)."""

    @abstractmethod
    def end_move(self, job_id: str) -> None:
        """The job's move is over (committed or undone); no-op when none is recorded."""

    @abstractmethod
    def moves(self) -> list[MoveRecord]:
        """The moves under way, by job id."""

    @abstractmethod
    def readdress_shard(self, shard_id: str, address: str) -> list[str]:
        """Point the slices that shard ``shard_id`` holds of pending and running jobs at
        ``address``; returns those jobs' ids, oldest first."""

    @abstractmethod
    def close(self) -> None:
        """Release what the store holds (connections, files)."""
