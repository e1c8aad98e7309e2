"""A durable shard process SIGKILLed mid-stream and restarted on the same port loses no
acknowledged push (its gradient nor its buffer change) and applies every retried push once."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch

from pscluster.server.job_buffers import decode_buffers, encode_buffers
from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc
from tests.server.shard_process import ShardProcess
from tests.support import wait_for

RECOVERED = re.compile(r"recovered (\d+) job\(s\) from .* \((\d+) records replayed\)")
LENGTH = 50_000
PUSHES = 120
LR = 0.05
BUFFERS = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)  # the last one counts


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[ShardProcess]:
    process = ShardProcess({"PSC_SHARD_DATA_DIR": str(tmp_path / "data")})
    yield process
    process.stop()


def _grad(seq: int) -> torch.Tensor:
    return torch.randn(LENGTH, generator=torch.Generator().manual_seed(seq))


def _delta(seq: int) -> torch.Tensor:
    return torch.tensor([seq * 0.25, -0.5, 0.0, 1.0], dtype=torch.float64)


def _push(stub: ps_grpc.ParameterServerStub, seq: int) -> ps_pb2.PushReply:
    header = ps_pb2.PushHeader(
        job_id="k",
        worker_id="w",
        seq=seq,
        length=LENGTH,
        dtype=common_pb2.DTYPE_FLOAT32,
        buffer_delta=encode_buffers(_delta(seq)),
    )
    body = wire.encode(_grad(seq))
    chunks = [ps_pb2.PushChunk(header=header)]
    chunks += [ps_pb2.PushChunk(data=bytes(c)) for c in wire.chunks(body, 1 << 16)]
    return stub.Push(iter(chunks), timeout=5)


def _pusher(port: int, replies: dict[int, ps_pb2.PushReply], errors: list[str]) -> None:
    """Push seq 1..PUSHES; an unanswered push is retried with the same seq until answered."""
    channel = open_channel(f"127.0.0.1:{port}")
    stub = ps_grpc.ParameterServerStub(channel)
    deadline = time.monotonic() + 180
    try:
        for seq in range(1, PUSHES + 1):
            while seq not in replies:
                if time.monotonic() > deadline:
                    errors.append(f"push {seq} unanswered for 180 s")
                    return
                try:
                    replies[seq] = _push(stub, seq)
                except grpc.RpcError as exc:
                    if exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED,
                    ):
                        errors.append(f"push {seq}: {exc.code()} {exc.details()}")
                        return
                    time.sleep(0.1)  # the shard is down: retry shortly, as a worker does
    finally:
        channel.close()


@contextmanager
def _connected(port: int) -> Iterator[ps_grpc.ParameterServerStub]:
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        wait_ready(channel, timeout=30)
        yield ps_grpc.ParameterServerStub(channel)
    finally:
        channel.close()


def _init_job(stub: ps_grpc.ParameterServerStub, initial: torch.Tensor) -> None:
    """Job "k": async plain SGD with buffers (the last one a counter), member "w"."""
    config = ps_pb2.ShardJobConfig(
        job_id="k",
        length=LENGTH,
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=LR),
        buffer_length=BUFFERS.numel(),
        counters=[ps_pb2.Span(start=3, length=1)],
        initial_buffers=encode_buffers(BUFFERS),
    )
    init = [ps_pb2.InitJobChunk(config=config)]
    init += [ps_pb2.InitJobChunk(data=bytes(c)) for c in wire.chunks(wire.encode(initial), 1 << 16)]
    stub.InitJob(iter(init), timeout=30)
    stub.SetMembers(
        ps_pb2.SetMembersRequest(job_id="k", worker_ids=["w"], generation=1), timeout=30
    )


def test_sigkilled_shard_recovers_every_acknowledged_push(shard: ShardProcess) -> None:
    # Prepare: an async plain-SGD job, one member
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    port = shard.start()
    initial = torch.linspace(-1, 1, LENGTH)
    with _connected(port) as stub:
        _init_job(stub, initial)

    # Execute: push in the background, SIGKILL the shard mid-stream, restart it on its port
    replies: dict[int, ps_pb2.PushReply] = {}
    errors: list[str] = []
    pusher = threading.Thread(target=_pusher, args=(port, replies, errors), daemon=True)
    pusher.start()
    target = rng.randint(10, PUSHES - 30)
    wait_for(
        lambda: len(replies) >= target or not pusher.is_alive(),
        120,
        what=f"{target} acknowledged pushes",
        poll=0.005,
    )
    # Then a random moment: the kill lands anywhere in a push, not just after an answer.
    time.sleep(rng.random() * 0.05)
    acked_before_kill = len(replies)
    shard.kill()
    killed = time.monotonic()
    assert shard.start(port) == port
    print(f"killed after {acked_before_kill} acks; serving again {time.monotonic() - killed:.2f}s")
    pusher.join(timeout=200)

    # Assert
    assert not pusher.is_alive() and not errors, errors
    assert all(r.outcome == ps_pb2.PUSH_OUTCOME_APPLIED for r in replies.values())
    recovered = [RECOVERED.search(line) for line in shard.log]
    found = [m for m in recovered if m]
    assert found and found[-1].group(1) == "1", shard.log[-20:]
    print(f"records replayed: {found[-1].group(2)}")
    with _connected(port) as stub:
        stats = stub.GetJobStats(ps_pb2.JobStatsRequest(job_id="k"), timeout=30)
        assert stats.version == len(replies) == PUSHES
        assert stats.pushes_applied == PUSHES
        assert stats.durable and stats.records_replayed == int(found[-1].group(2))
        _assert_every_push_applied_once(stub, initial)
        _assert_retries_are_duplicates(stub, stats)


def _assert_every_push_applied_once(
    stub: ps_grpc.ParameterServerStub, initial: torch.Tensor
) -> None:
    """The values are what single-process torch makes of exactly these gradients, and the
    buffers hold every push's delta once."""
    expected = initial.clone()
    for seq in range(1, PUSHES + 1):
        expected.add_(_grad(seq), alpha=-LR)
    reply = list(stub.Pull(ps_pb2.PullRequest(job_id="k"), timeout=30))
    pulled = b"".join(c.data for c in reply[1:])
    values = wire.decode(bytearray(pulled), common_pb2.DTYPE_FLOAT32, LENGTH)
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-5)
    buffers = decode_buffers(reply[0].header.buffers, BUFFERS.numel(), "pulled buffers")
    assert torch.equal(buffers, BUFFERS + sum(_delta(seq) for seq in range(1, PUSHES + 1)))


def _assert_retries_are_duplicates(
    stub: ps_grpc.ParameterServerStub, stats: common_pb2.ShardJobStats
) -> None:
    """Acknowledged pushes re-sent after the restart are answered as duplicates, unapplied."""
    again = _push(stub, PUSHES - 1)
    last = _push(stub, PUSHES)
    after = stub.GetJobStats(ps_pb2.JobStatsRequest(job_id="k"), timeout=30)
    assert again.duplicate and last.duplicate and last.outcome == ps_pb2.PUSH_OUTCOME_APPLIED
    assert after.checksum == stats.checksum and after.version == PUSHES
    assert after.pushes_duplicate >= stats.pushes_duplicate + 2
