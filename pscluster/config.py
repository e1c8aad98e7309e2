"""One settings object for every process, read from ``PSC_*`` environment variables.

The same names work in local mode, in docker compose and in Kubernetes, so a deployment is
configured by environment alone. Command-line flags override individual fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PSC_", extra="ignore")

    # Where clients and workers find the coordinator.
    coordinator: str = "localhost:50051"
    # Interface servers bind to; compose and Kubernetes set 0.0.0.0.
    host: str = "127.0.0.1"
    coordinator_port: int = 50051
    shard_port: int = 50061
    # Address under which a shard is reached by others; defaults to host:port.
    advertise: str = ""
    # Shard addresses, comma-separated, as the coordinator reaches them. Unset: shards register
    # themselves (a shard given PSC_COORDINATOR does) and jobs go to the live registered ones.
    shards: str = ""
    # A shard's stable identity when it registers; "" takes the host name (a StatefulSet pod
    # "ps-2", a compose container given `hostname:`), so a restarted shard is the same shard.
    shard_id: str = ""
    # Where a shard without PSC_SHARD_ID takes its id from: "reverse-dns" is the name DNS gives
    # its own address, for replicas of one compose service ("pscluster-ps-2", the container's
    # name; it is then also the address advertised). See pscluster/server/identity.py.
    shard_id_from: Literal["hostname", "reverse-dns"] = "hostname"
    # Coordinator: a registered shard not heard from for this long is not live, and new jobs
    # are not placed on it (running jobs keep their shards). Shards register every heartbeat.
    shard_timeout_seconds: float = Field(10.0, gt=0)
    # Coordinator state: the SQLite database and the job blobs (datasets, models).
    state_dir: Path = Path(".pscluster")
    db_path: Path | None = None

    heartbeat_seconds: float = Field(1.0, gt=0)
    # A worker that sends no heartbeat for this long is dead and its leases go back to the pool.
    # 3 heartbeats; the monitor checks every half heartbeat, so a dead worker is declared dead
    # 3 to 3.5 heartbeats after its last beat (measured 2.5-3.0 s, tests/faults).
    worker_timeout_seconds: float = Field(3.0, gt=0)
    # A job that makes no progress for this long says why in its status.
    stall_seconds: float = Field(20.0, gt=0)
    # ... and fails with that reason once it is this long (0: never), if workers hold its
    # leases: a deadlock, or a worker hung in user code while its heartbeats go on, would hold
    # it forever. A job waiting for workers (none alive, none taking a lease) waits on.
    stall_fail_seconds: float = Field(1800.0, ge=0)
    # Coordinator, mode "auto": the most a job's trial copy (pscluster/server/trial.py: its
    # parameters and optimizer state, held on each shard while a stale setting is in force so
    # that a verdict can undo it) may take on one shard, in MiB. A job whose copy would take
    # more keeps none, and its verdicts only tighten; 0: no job keeps one.
    auto_trial_max_mb: float = Field(1024.0, ge=0)
    # The most local steps per push mode "auto" may give a job's workers; 1: never any.
    auto_max_local_steps: int = Field(8, ge=1, le=1024)
    default_partitions: int = Field(12, ge=1)

    chunk_bytes: int = Field(1 << 20, ge=1024)
    # Every message is a chunk or a small control message, so this bounds memory per message.
    max_message_bytes: int = Field(8 << 20, ge=1 << 16)
    # Longest a pull waits on the server for a barrier or a staleness bound before it answers
    # DEADLINE_EXCEEDED and the worker re-checks its lease.
    pull_wait_seconds: float = Field(10.0, gt=0)
    rpc_timeout_seconds: float = Field(60.0, gt=0)
    grpc_threads: int = Field(64, ge=4)
    # Calls a server accepts at once, queued for its threads; beyond it gRPC answers
    # RESOURCE_EXHAUSTED. It bounds a flood's memory; it must sit above what a cluster
    # legitimately has in flight (every worker's heartbeat plus its lease call: 500 workers
    # are 1,000), or a busy coordinator refuses heartbeats and declares live workers dead.
    max_concurrent_rpcs: int = Field(4096, ge=16)
    # Coordinator: how long AcquireTask holds a worker that has nothing to do, answering as
    # soon as a lease frees up (a long poll: with short epochs, a worker that slept between
    # polls lost every partition to the one that just finished its own). 0: answer at once.
    acquire_hold_seconds: float = Field(0.5, ge=0, le=5)
    grace_seconds: float = Field(2.0, ge=0)
    # A worker's id ("": the coordinator picks one). A fixed id names a worker in logs and
    # metrics across restarts; two live workers must not share one.
    worker_id: str = ""
    # Workers: the torch device ("" picks cuda when available, else cpu) and intra-op threads
    # (0 keeps torch's default; local clusters on few cores set 1 so processes do not contend).
    device: str = ""
    torch_threads: int = Field(0, ge=0)
    # Workers: how much of a job's uploaded training rows to keep between leases, in MiB (the
    # partitions fetched, least recently leased dropped first; a lease's own is always held):
    # a job whose rows fit is fetched once per worker, not once per lease. 64, as a parquet
    # source's cache_mb: the small jobs whose leases are short enough for the fetch to show.
    data_cache_mb: float = Field(64.0, ge=0)
    # How often a worker sends its step losses (and its lease's progress) to the coordinator.
    progress_seconds: float = Field(0.5, gt=0)
    # Workers: push each bucket of the gradient as backward produces it and run forward while
    # the pull arrives (one step per push, uncompressed, no embedding tables;
    # pscluster/worker/overlap.py). "auto": on for a CUDA worker, whose cores are free to move
    # bytes while the GPU computes; off on CPUs, where compute already uses every core and
    # overlapping measured 5-25% slower (docs/benchmarks.md, bench/peers.py).
    overlap: Literal["auto", "on", "off"] = "auto"
    overlap_bucket_bytes: int = Field(4 << 20, ge=4096)
    # Fault injection for straggler tests and benchmarks: a worker stretches the compute of
    # each batch to this many times its length (1: off), as a slower device would.
    slowdown: float = Field(1.0, ge=1.0, le=1000.0)
    # Prometheus metrics over HTTP at /metrics on this port (0 picks a free one; the bound
    # port is logged); unset: not served. Every role reads it (docs/observability.md).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    log_level: str = "INFO"
    # "text": the classic one line per record; "json": one JSON object per line with ts,
    # level, logger, message, role, and job_id / worker_id when known (pscluster/logs.py).
    log_format: Literal["text", "json"] = "text"

    # --- durability (shards; docs/reliability.md) ---
    # Where a shard keeps its write-ahead log and checkpoints, one folder per job. Unset: state
    # is in memory only, and a restarted shard comes back without its jobs. "{shard_id}" in it
    # is the shard's id: replicas sharing one volume each keep their own folder of it.
    shard_data_dir: Path | None = None
    # When an acknowledged push is on disk. "always": fsync before the reply (group commit:
    # concurrent pushes share one fsync). "interval": fsync at most every
    # wal_fsync_interval_seconds (a crash of the process loses nothing, a crash of the machine
    # up to one interval). "never": the kernel decides.
    wal_fsync: Literal["always", "interval", "never"] = "always"
    wal_fsync_interval_seconds: float = Field(0.05, gt=0)
    # A checkpoint (then a fresh log) after this long, or once the log has grown this much.
    checkpoint_seconds: float = Field(30.0, gt=0)
    checkpoint_wal_bytes: int = Field(256 << 20, ge=1 << 16)

    # --- security (docs/reliability.md, "Security model") ---
    # Servers: the cluster's admin token (or a file holding it). Set: every RPC but health
    # checks needs a token; unset: no authentication (a warning says so at start).
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    # Clients, workers and the coordinator: the token sent with each call (admin, or a job's).
    token: SecretStr | None = None
    token_file: Path | None = None
    # TLS, PEM files. Servers: tls_cert + tls_key, and tls_ca with tls_client_auth for mutual
    # TLS. Clients: tls_ca to verify servers, tls_cert + tls_key as client certificate (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_client_auth: bool = False
    # Clients: the name expected in the server's certificate, when it differs from the host
    # dialled (e.g. a certificate for "pscluster" reached at 127.0.0.1).
    tls_server_name: str = ""

    # --- limits (RESOURCE_EXHAUSTED beyond them) ---
    max_model_parameters: int = Field(1_000_000_000, ge=1)
    max_active_jobs: int = Field(32, ge=1)
    # Pending or running jobs one submitter (one token, or one peer host without auth) may have.
    max_active_jobs_per_client: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _chunks_fit_messages(self) -> Settings:
        # A data chunk travels inside a message with a few bytes of framing around it.
        if self.chunk_bytes > self.max_message_bytes - 1024:
            raise ValueError(
                f"chunk_bytes ({self.chunk_bytes}) must be at least 1024 bytes below "
                f"max_message_bytes ({self.max_message_bytes}): lower PSC_CHUNK_BYTES or raise "
                "PSC_MAX_MESSAGE_BYTES"
            )
        return self

    def shard_list(self) -> list[str]:
        return [s.strip() for s in self.shards.split(",") if s.strip()]

    def database(self) -> Path:
        return self.db_path or self.state_dir / "coordinator.sqlite"
