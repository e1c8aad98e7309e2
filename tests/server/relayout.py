"""What the live re-layout tests share: a job made through the shard client, its state under
another layout generation, a worker's pull in a thread of its own, and waiting for a shard to
list a member as held."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.server.main import ShardServer, serve
from pscluster.shard_client import JobShards, ShardClient, ShardError, ShardRange, Snapshot
from pscluster.transport import wire
from pscluster.transport.retry import retry
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.trainer import SHARD_RETRY
from tests.support import wait_for

HOLD = ps_pb2.HOLD_ACTION_HOLD
RELEASE = ps_pb2.HOLD_ACTION_RELEASE
MOVED = ps_pb2.HOLD_ACTION_MOVED


def momentum_sgd() -> common_pb2.OptimizerConfig:
    """Momentum makes the optimizer's state matter: a move that lost it shows in the values."""
    return common_pb2.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9)


def make_job(
    shards: ShardClient,
    address: str,
    job_id: str,
    values: torch.Tensor,
    *,
    members: tuple[str, ...] = ("w1",),
    layout_generation: int = 0,
) -> JobShards:
    """An async momentum-SGD job on one shard, through the shard client; the worker's view of
    it at ``layout_generation``."""
    config = ps_pb2.ShardJobConfig(
        job_id=job_id,
        length=values.numel(),
        mode="async",
        optimizer=momentum_sgd(),
        layout_generation=layout_generation,
    )
    shards.init_job([(address, config, values)])
    shards.set_members([address], job_id, list(members), 1)
    return view(shards, address, job_id, values.numel(), layout_generation)


def view(
    shards: ShardClient, address: str, job_id: str, length: int, layout_generation: int = 0
) -> JobShards:
    """A worker's view of a one-shard job, by a plan of ``layout_generation``."""
    return JobShards(shards, job_id, [ShardRange(address, 0, length)], layout_generation)


def push(job: JobShards, worker: str, seq: int, grad: torch.Tensor, base: Snapshot) -> int:
    """Push ``grad`` (float32) to the job's one shard; the version after it (fails loudly)."""
    replies = job.push(worker, seq, {0: wire.encode(grad)}, "none", base, 1, timeout=10.0)
    reply = replies[0]
    assert isinstance(reply, ps_pb2.PushReply), reply
    assert reply.outcome == ps_pb2.PUSH_OUTCOME_APPLIED, reply
    return reply.version


def at_generation(state: bytes, generation: int) -> bytes:
    """An exported state as the coordinator adopts it elsewhere: its config under another
    layout generation, nothing else changed."""
    tensors, meta = state_from_bytes(state)
    meta["config"]["layout_generation"] = generation
    return state_to_bytes(tensors, meta)


def wait_waiting(shards: ShardClient, address: str, job_id: str, waiting: list[str]) -> None:
    """Poll HoldJob(HOLD), as the coordinator does, until exactly ``waiting`` are held."""

    def held() -> bool:
        return list(shards.hold_job(address, job_id, HOLD).waiting) == waiting

    wait_for(held, 10.0, what=f"{waiting} held on {address}")


class PullInThread:
    """``job.pull(worker)`` in a thread: its snapshot, or the exception it ended with."""

    def __init__(self, job: JobShards, worker: str, timeout: float = 20.0) -> None:
        self.snapshot: Snapshot | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(job, worker, timeout))
        self._thread.start()

    def _run(self, job: JobShards, worker: str, timeout: float) -> None:
        # As a worker pulls: a pull held for a move gives up within a second (the shard's
        # HELD_PULL_SECONDS) and is made again at once, until it is granted or moved.
        try:
            self.snapshot = retry(lambda: job.pull(worker, None, timeout), SHARD_RETRY, what="pull")
        except Exception as e:
            self.error = e

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the pull still waits"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


# --- fixtures of the live re-layout tests: a test module takes them by assigning them to its
# own names (``settings = relayout.settings_fixture``), so pytest finds them there ---


@pytest.fixture(name="settings")
def settings_fixture() -> Settings:
    # Small chunks: a job's state (12 KB of values and as much momentum) streams in many, and
    # a range's bytes cross chunk bounds anywhere.
    return Settings(host="127.0.0.1", pull_wait_seconds=5.0, grace_seconds=0.0, chunk_bytes=1024)


def _serve(settings: Settings) -> Iterator[str]:
    running: ShardServer = serve(settings, port=0)
    yield f"127.0.0.1:{running.port}"
    running.stop(0)


@pytest.fixture(name="first")
def first_fixture(settings: Settings) -> Iterator[str]:
    yield from _serve(settings)


@pytest.fixture(name="second")
def second_fixture(settings: Settings) -> Iterator[str]:
    yield from _serve(settings)


@pytest.fixture(name="shards")
def shards_fixture(settings: Settings) -> Iterator[ShardClient]:
    client = ShardClient(settings)
    yield client
    client.close()


def assert_not_adopted(shards: ShardClient, adopter: str, holder: str, job_id: str = "j") -> None:
    """A refused adoption changed nothing: ``adopter`` has no such job, ``holder`` still holds
    it at layout generation 0."""
    with pytest.raises(ShardError) as absent:
        shards.hold_job(adopter, job_id, HOLD)
    assert absent.value.status == grpc.StatusCode.NOT_FOUND
    assert shards.hold_job(holder, job_id, HOLD).layout_generation == 0
