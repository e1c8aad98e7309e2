"""Plain Python views of the coordinator's replies, so SDK users never handle protobufs.

Sentinels of the wire format (``-1`` for "no evaluation yet", ``0.0`` for "not started", NaN
for "not measured") become ``None`` here: a user comparing ``info.test_accuracy >= 0.9`` should
not have to know them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pscluster.client.metrics import ACCURACY, LOSS
from pscluster.v1 import coordinator_pb2 as co_pb2

TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class JobInfo:
    """A job's state and progress as the coordinator last reported it."""

    job_id: str
    name: str
    state: str  # "pending" | "running" | "completed" | "failed" | "cancelled"
    mode: str
    epoch: int  # current epoch, 0-based; == epochs when training is done
    epochs: int
    progress: float  # 0..1
    status_message: str
    error: str
    created_unix: float
    started_unix: float | None
    finished_unix: float | None
    test_accuracy: float | None  # latest evaluation; None too when the job measures no accuracy
    # What the job evaluates on its test set besides the loss ("accuracy", "mse", "mae" or
    # "loss"; "" for a predict job) and its value at the latest evaluation (None before the
    # first).
    metric: str
    metric_value: float | None
    last_loss: float | None  # training loss of the latest step
    num_params: int
    workers: tuple[str, ...]
    steps: int
    kind: str = "train"  # "train", or "predict" (a batch inference job: Client.predict)

    @property
    def done(self) -> bool:
        """True once the job can no longer change (completed, failed or cancelled)."""
        return self.state in TERMINAL_STATES

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (None until both are known)."""
        if self.started_unix is None or self.finished_unix is None:
            return None
        return self.finished_unix - self.started_unix

    @classmethod
    def from_proto(cls, m: co_pb2.JobInfo) -> JobInfo:
        accuracy = m.test_accuracy if m.test_accuracy >= 0 else None
        metric, value = _metric(m, accuracy)
        return cls(
            job_id=m.job_id,
            name=m.name,
            state=m.state,
            mode=m.mode,
            epoch=m.epoch,
            epochs=m.epochs,
            progress=m.progress,
            status_message=m.status_message,
            error=m.error,
            created_unix=m.created_unix,
            started_unix=m.started_unix or None,
            finished_unix=m.finished_unix or None,
            test_accuracy=accuracy,
            metric=metric,
            metric_value=value,
            last_loss=m.last_loss if m.last_loss >= 0 else None,
            num_params=m.num_params,
            workers=tuple(m.workers),
            steps=m.steps,
            kind=m.kind or "train",
        )


def _metric(m: co_pb2.JobInfo, accuracy: float | None) -> tuple[str, float | None]:
    """The job's metric and its latest value, from a coordinator of any age."""
    if m.kind == "predict":
        return "", None  # a predict job evaluates nothing
    if not m.metric:
        # An older coordinator: a job that measures accuracy is a classifier; any other
        # reports only its loss, whose value at an evaluation such a coordinator does not send.
        return (ACCURACY, accuracy) if accuracy is not None else (LOSS, None)
    if m.metric == ACCURACY:
        # test_accuracy keeps the -1 of "no evaluation yet", whatever metric_value holds then.
        return ACCURACY, accuracy
    return m.metric, None if math.isnan(m.metric_value) else m.metric_value


@dataclass(frozen=True)
class ShardHealth:
    address: str
    healthy: bool
    error: str


@dataclass(frozen=True)
class ShardInfo:
    """A shard new jobs may be placed on: one that registered (``shard_id``), or one of the
    coordinator's static list (``shard_id`` "", always ``live``)."""

    shard_id: str
    address: str
    live: bool  # registered again within the coordinator's shard timeout
    last_seen_age: float | None  # seconds; None: not heard from since the coordinator started
    jobs: tuple[str, ...]  # pending and running jobs with a range on it


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    host: str
    device: str
    alive: bool
    last_heartbeat_age: float  # seconds
    job_id: str  # "" when idle
    task: str  # "train e3/p5 b0-4", "eval e3", "idle"
    straggler: bool = False  # flagged on the job of its lease
    slowdown: float = 0.0  # its busy time per batch over the median of the job's others


@dataclass(frozen=True)
class ClusterStatus:
    shards: tuple[ShardHealth, ...]
    workers: tuple[WorkerInfo, ...]
    # The shards the coordinator places jobs on, with the jobs each holds (empty from a
    # coordinator that predates shard registration).
    registry: tuple[ShardInfo, ...] = ()
    static_shards: bool = True  # placed by PSC_SHARDS, not by registration

    @property
    def healthy(self) -> bool:
        """Every shard answers and at least one worker is alive: jobs can make progress."""
        return all(s.healthy for s in self.shards) and any(w.alive for w in self.workers)

    @classmethod
    def from_proto(
        cls, m: co_pb2.ClusterStatusReply, listed: co_pb2.ListShardsReply | None = None
    ) -> ClusterStatus:
        registry = tuple(
            ShardInfo(
                s.shard_id,
                s.address,
                s.live,
                None if s.last_seen_age < 0 else s.last_seen_age,
                tuple(s.jobs),
            )
            for s in (listed.shards if listed is not None else ())
        )
        return cls(
            registry=registry,
            static_shards=listed is None or listed.static_list,
            shards=tuple(ShardHealth(s.address, s.healthy, s.error) for s in m.shards),
            workers=tuple(
                WorkerInfo(
                    worker_id=w.worker_id,
                    host=w.host,
                    device=w.device,
                    alive=w.alive,
                    last_heartbeat_age=w.last_heartbeat_age,
                    job_id=w.job_id,
                    task=w.task,
                    straggler=w.straggler,
                    slowdown=w.slowdown,
                )
                for w in m.workers
            ),
        )
