"""Fixtures for the coordinator tests: real shards, a real coordinator on a free port, and a
worker played by hand through the gRPC API (the tiny job it trains: tests.support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.coordinator.main import CoordinatorHandle, serve
from pscluster.coordinator.memory_store import MemoryStore
from pscluster.coordinator.sqlite_store import SqliteStore
from pscluster.coordinator.store import JobStore
from pscluster.server.main import serve as serve_shard
from pscluster.shard_client import ShardClient, ShardError, ShardRange, Snapshot
from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.transport.server import RunningServer
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc
from tests.support import TinyJob, wait_for

RPC_TIMEOUT = 20.0
# How long a test waits for a state the coordinator reaches on its own.
WAIT = 15.0


@dataclass
class Shards:
    """The shards under test, and the shard client workers and the coordinator use."""

    servers: list[RunningServer]
    client: ShardClient = field(default_factory=lambda: ShardClient(Settings()))

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    def stub(self, address: str) -> ps_grpc.ParameterServerStub:
        return self.client.stub(address)

    def stats(self, address: str, job_id: str) -> common_pb2.ShardJobStats:
        return self.stub(address).GetJobStats(
            ps_pb2.JobStatsRequest(job_id=job_id), timeout=RPC_TIMEOUT
        )


class HandWorker:
    """A worker played by hand: each call is one RPC, so a test decides what happens when."""

    def __init__(self, stub: co_grpc.CoordinatorStub, shards: Shards, worker_id: str = "") -> None:
        self.stub = stub
        self.shards = shards
        reply = stub.RegisterWorker(
            co_pb2.RegisterWorkerRequest(host="test", pid=1, device="cpu", worker_id=worker_id),
            timeout=RPC_TIMEOUT,
        )
        self.worker_id = reply.worker_id
        self.seq = 0

    def heartbeat(self) -> co_pb2.HeartbeatReply:
        return self.stub.Heartbeat(
            co_pb2.HeartbeatRequest(worker_id=self.worker_id), timeout=RPC_TIMEOUT
        )

    def acquire(self) -> co_pb2.Task:
        return self.stub.AcquireTask(
            co_pb2.AcquireTaskRequest(worker_id=self.worker_id), timeout=RPC_TIMEOUT
        )

    def complete(self, task: co_pb2.Task, accuracy: float = 0.5, loss: float = 1.0) -> None:
        self.stub.CompleteTask(
            co_pb2.CompleteTaskRequest(
                worker_id=self.worker_id,
                lease_id=task.lease_id,
                test_accuracy=accuracy,
                test_loss=loss,
                samples=8,
            ),
            timeout=RPC_TIMEOUT,
        )

    def report(self, job_id: str, epoch: int, losses: list[float]) -> None:
        steps = [co_pb2.StepMetric(loss=v, samples=4, epoch=epoch) for v in losses]
        self.stub.ReportProgress(
            co_pb2.ReportProgressRequest(worker_id=self.worker_id, job_id=job_id, steps=steps),
            timeout=RPC_TIMEOUT,
        )

    def push_ones(self, plan: co_pb2.JobPlan) -> list[ps_pb2.PushReply]:
        """Push a gradient of ones to every shard of the job (as one training step), computed
        on version 0, as a worker pushes: every shard at once."""
        self.seq += 1
        ranges = [ShardRange.from_proto(r) for r in plan.shards]
        base = Snapshot(torch.empty(0), torch.empty(0), [0] * len(ranges), [0] * len(ranges))
        payloads = {i: wire.encode(torch.ones(r.length)) for i, r in enumerate(ranges)}
        results = self.shards.client.push_all(
            plan.job_id,
            ranges,
            payloads,
            worker_id=self.worker_id,
            seq=self.seq,
            codec="none",
            base=base,
            batch_size=4,
            timeout=RPC_TIMEOUT,
        )
        replies = [results[i] for i in range(len(ranges))]
        for reply in replies:
            if isinstance(reply, ShardError):
                raise reply
        return [r for r in replies if isinstance(r, ps_pb2.PushReply)]


@pytest.fixture(scope="session", autouse=True)
def _torch_optim_imported() -> None:
    """torch (2.13) spends ~4 s importing its compiler stack on the first optimizer built in a
    process; a shard pays it on its first InitJob. Pay it once here so that per-test timings
    (and the deadlines they run under) measure the coordinator, not that import."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.fixture
def shards() -> Iterator[Shards]:
    settings = Settings(host="127.0.0.1", grace_seconds=0.0, pull_wait_seconds=2.0)
    group = Shards([serve_shard(settings, port=0) for _ in range(2)])
    yield group
    group.client.close()
    for server in group.servers:
        server.stop(0)


def coordinator_settings(
    state_dir: Path, shard_addresses: list[str], **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "shards": ",".join(shard_addresses),
        "state_dir": state_dir,
        "heartbeat_seconds": 0.2,
        "worker_timeout_seconds": 5.0,
        "stall_seconds": 30.0,
        "chunk_bytes": 1024,
        "rpc_timeout_seconds": 30.0,  # a shard builds its first torch optimizer slowly
        "grace_seconds": 0.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Running:
    """A coordinator under test and a client stub on it."""

    handle: CoordinatorHandle
    stub: co_grpc.CoordinatorStub
    channel: grpc.Channel

    def close(self) -> None:
        self.channel.close()
        self.handle.stop(0)


def start_coordinator(settings: Settings) -> Running:
    handle = serve(settings, port=0)
    channel = open_channel(f"127.0.0.1:{handle.port}", settings)
    wait_ready(channel, timeout=10)
    return Running(handle, co_grpc.CoordinatorStub(channel), channel)


@pytest.fixture
def make_coordinator(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start coordinators (stopped at teardown); kwargs override settings fields."""
    started: list[Running] = []

    def make(shard_addresses: list[str], **overrides: object) -> Running:
        running = start_coordinator(
            coordinator_settings(tmp_path / "state", shard_addresses, **overrides)
        )
        started.append(running)
        return running

    yield make
    for running in started:
        running.close()


def submit(stub: co_grpc.CoordinatorStub, job: TinyJob) -> co_pb2.JobInfo:
    return stub.SubmitJob(job.chunks(), timeout=RPC_TIMEOUT)


def plan_of(stub: co_grpc.CoordinatorStub, job_id: str) -> co_pb2.JobPlan:
    return stub.GetJobPlan(co_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)


def get_job(stub: co_grpc.CoordinatorStub, job_id: str) -> co_pb2.JobInfo:
    return stub.GetJob(co_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)


def wait_for_job(stub: co_grpc.CoordinatorStub, job_id: str, state: str) -> None:
    """Wait until the job is in ``state`` (a job ends in the background, after the final
    CompleteTask has been answered)."""
    wait_for(lambda: get_job(stub, job_id).state == state, WAIT, what=f"job {job_id} to be {state}")


def fetch_model(stub: co_grpc.CoordinatorStub, job_id: str) -> bytes:
    chunks = stub.FetchModel(co_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)
    data = bytearray()
    for c in chunks:
        assert c.blob == "model"
        data += c.data
    return bytes(data)


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """Each store backend in turn: the contract tests run against both."""
    s: JobStore = (
        SqliteStore(tmp_path / "db.sqlite") if request.param == "sqlite" else MemoryStore()
    )
    yield s
    s.close()
