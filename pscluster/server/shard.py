"""A shard's jobs by id. Its lock guards only the dict: each job has its own lock, so a slow
push to one job never holds up another job.

A live re-layout (the coordinator's ScaleShards) holds a job here, exports its state, adopts
states cut for this shard and lets jobs move away (:mod:`pscluster.server.shard_relayout`,
with :mod:`pscluster.server.layout_gate` and :mod:`pscluster.server.relayout`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import torch

from pscluster.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pscluster.server import relayout
from pscluster.server.consistency import validate_consistency
from pscluster.server.domain import JobConfig
from pscluster.server.durability.journal import DurabilityConfig, Journal
from pscluster.server.job_buffers import check_buffer_spec, initial_buffers
from pscluster.server.shard_job import ShardJob
from pscluster.server.shard_relayout import RelayoutMixin, Retired
from pscluster.server.tables.rows import SplitStream, initial_tables
from pscluster.transport import wire

log = logging.getLogger(__name__)


class Shard(RelayoutMixin):
    """``durability`` None keeps every job in memory only; otherwise each job is logged and
    checkpointed under ``durability.data_dir`` (see :mod:`pscluster.server.durability`)."""

    def __init__(
        self, durability: DurabilityConfig | None = None, max_values: int = 1_000_000_000
    ) -> None:
        # The largest range a job may ask this shard to hold (PSC_MAX_MODEL_PARAMETERS): an
        # InitJob announcing more is refused before anything is allocated for it.
        self.max_values = max_values
        self._jobs: dict[str, ShardJob] = {}
        self._starting: set[str] = set()  # InitJobs writing their first checkpoint
        self._lock = threading.Lock()
        self._durability = durability
        self._moved = relayout.MovedJobs()  # jobs that moved away: "layout moved", not NOT_FOUND
        self._retired: dict[str, Retired] = {}  # jobs an adoption replaced, until settled
        # The largest state an AdoptJob may announce, refused before any of it is received.
        self.max_state_bytes = (
            relayout.STATE_BYTES_PER_VALUE * max_values + relayout.STATE_OVERHEAD_BYTES
        )

    def check_new(self, config: JobConfig) -> None:
        """Validate a job config before its (possibly large) initial values are received."""
        self._check_config(config)
        with self._lock:
            if config.job_id in self._jobs or config.job_id in self._starting:
                raise AlreadyExists(f"job {config.job_id} already exists on this shard")

    def _check_config(self, config: JobConfig) -> None:
        if not config.job_id:
            raise InvalidArgument("config.job_id is empty; name the job")
        validate_consistency(
            config.mode, config.staleness, config.backup_workers, config.local_steps
        )
        check_buffer_spec(config.buffer_length, config.counters)
        held = config.length + sum(t.local_rows * t.dim for t in config.tables)
        if held > self.max_values:
            raise ResourceExhausted(
                f"job {config.job_id} announces {held} values for this shard (parameters and "
                f"table rows); the limit is {self.max_values} (PSC_MAX_MODEL_PARAMETERS): "
                "spread the job over more shards or raise the limit"
            )

    def init_job(
        self,
        config: JobConfig,
        data: Iterable[bytes | memoryview],
        buffers: bytes = b"",
    ) -> ShardJob:
        """Create a job from its config, the chunks of its initial float32 values and its
        initial buffers (``ShardJobConfig.initial_buffers``: float64 little-endian)."""
        self.check_new(config)
        # Checked before the values stream in; its size is bounded by the config message's.
        initial = initial_buffers(config.buffer_length, buffers)
        try:
            values = torch.empty(config.length, dtype=torch.float32)
        except (MemoryError, RuntimeError):
            raise ResourceExhausted(
                f"job {config.job_id}: this shard cannot hold {config.length} values "
                f"({config.length * 4} bytes); spread the job over more shards"
            ) from None
        stream = iter(data)
        dense = SplitStream(stream, config.length * 4) if config.tables else None
        # Received straight into the job's values; the given table rows follow them.
        wire.fill(wire.byte_view(values), dense.head() if dense else stream)
        tables = initial_tables(config, dense.rest if dense else None)
        job = ShardJob(config, values, initial, tables)
        with self._lock:
            # Checked again: two InitJob calls for one id may have streamed at the same time.
            if config.job_id in self._jobs or config.job_id in self._starting:
                raise AlreadyExists(f"job {config.job_id} already exists on this shard")
            self._starting.add(config.job_id)
        try:
            if self._durability is not None:  # durable before anyone can push to it
                # Not yet reachable by any push: its tables are written without a copy.
                state = job.state_dict(copy=False)
                journal = Journal.create(config.job_id, state, self._durability)
                job.attach(journal)
            with self._lock:
                self._jobs[config.job_id] = job
                self._moved.forget(config.job_id)  # it may move back later: by AdoptJob
        finally:
            with self._lock:
                self._starting.discard(config.job_id)
        log.info(
            "job %s: %d values [%d, %d), mode %s, optimizer %s",
            config.job_id,
            config.length,
            config.start,
            config.start + config.length,
            config.mode,
            config.optimizer.name,
            extra={"job_id": config.job_id},
        )
        return job

    def adopt(self, job: ShardJob) -> None:
        """Serve a job recovered from its folder (before the server starts)."""
        with self._lock:
            if job.config.job_id in self._jobs:
                raise AlreadyExists(f"job {job.config.job_id} was recovered twice")
            self._jobs[job.config.job_id] = job

    def close(self) -> None:
        """Stop logging (the files stay for the next start)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.journal is not None:
                job.journal.close()

    def job(self, job_id: str) -> ShardJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} is not on this shard; InitJob it first")
        return job

    def job_at(self, job_id: str, layout_generation: int = 0) -> ShardJob:
        """The job a worker's request names, by the plan of ``layout_generation`` (0: not
        checked): LayoutMoved if the job moved away or is at a newer generation here."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                self._moved.check(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} is not on this shard; InitJob it first")
        job.gate.check(layout_generation)
        return job

    def drop(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            self._retired.pop(job_id, None)
            self._moved.forget(job_id)  # dropped: its workers hear NOT_FOUND, the job is gone
        if job is None:
            raise NotFound(f"job {job_id!r} is not on this shard")
        job.drop()
        log.info("job %s dropped", job_id, extra={"job_id": job_id})

    def job_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)
