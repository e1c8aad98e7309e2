"""Fixtures for the fuzz tests: a real shard and a real coordinator on loopback, each with a
job made before the fuzzing starts, raw gRPC calls (bytes in, bytes out), and the invariants
every fuzzed call must keep.

The servers are module-scoped: hypothesis runs many examples per test against one server, and
a fresh server per example would cost more than the thousands of calls together. Every check
therefore compares against the state read just before the call, not at setup.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, settings

from pscluster.config import Settings
from pscluster.coordinator.main import CoordinatorHandle
from pscluster.coordinator.main import serve as serve_coordinator
from pscluster.data.dataset import Dataset
from pscluster.model import source, state
from pscluster.model.layout import ParamLayout
from pscluster.server.main import serve as serve_shard
from pscluster.transport import wire
from pscluster.transport.server import RunningServer
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

RPC_TIMEOUT = 10.0
MAX_MESSAGE = 1 << 20  # PSC_MAX_MESSAGE_BYTES in these tests: small, so "oversized" is cheap
PS = "/pscluster.v1.ParameterServer/"
CO = "/pscluster.v1.Coordinator/"
GUARDED = "guarded"  # the shard job whose parameters no refused call may touch
SCRATCH = "scratch"  # a shard job fuzzed calls may change (membership, pushes)
MEMBER = "w1"
LENGTH = 64
# Jobs with a codec, so that compressed payloads get fuzzed too: job id -> codec.
CODEC_JOBS = {"c-fp16": "fp16", "c-int8": "int8", "c-topk": "topk", "c-dgc": "dgc"}
FIXTURE_JOBS = {GUARDED: "", SCRATCH: "", **CODEC_JOBS}

# Codes a refused call may end with. Never UNKNOWN or INTERNAL (a bug on the server) nor
# UNAVAILABLE (the server fell over). CANCELLED only where the client cancelled.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# What an undecodable message gets once DecodeGuard is wired (INVALID_ARGUMENT), or today.
UNGUARDED_DETAILS = "Exception deserializing request!"

# Examples per fuzz test: ~25 tests x 60-200 examples keeps the suite to a few thousand calls.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a red CI run is a reproducible one
    database=None,
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


def fuzz_settings(tmp: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "max_message_bytes": MAX_MESSAGE,
        "chunk_bytes": MAX_MESSAGE // 4,
        "pull_wait_seconds": 0.3,
        "grace_seconds": 0.0,
        "state_dir": tmp,
        "worker_timeout_seconds": 30.0,
        "grpc_threads": 8,
        # AcquireTask answers at once: a held call would make each fuzzed one last the hold
        # (the hold itself is tested in tests/coordinator/test_acquire_hold.py).
        "acquire_hold_seconds": 0.0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


# --- raw calls ---


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its code and details, and the reply bytes (or messages) if OK."""

    code: grpc.StatusCode
    details: str
    replies: list[bytes]


class Raw:
    """Calls by method name with bytes in and bytes out, so a test can send anything.

    The channel has no message limits of its own: an oversized message must be refused by the
    server, not by the client.
    """

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT)

    def close(self) -> None:
        self.channel.close()

    def unary(self, method: str, request: bytes, timeout: float = RPC_TIMEOUT) -> Outcome:
        call = self.channel.unary_unary(method, None, None)
        try:
            reply = call(request, timeout=timeout)
        except grpc.RpcError as e:
            return _failed(e)
        return Outcome(grpc.StatusCode.OK, "", [reply])

    def server_stream(self, method: str, request: bytes, timeout: float = RPC_TIMEOUT) -> Outcome:
        call = self.channel.unary_stream(method, None, None)
        replies: list[bytes] = []
        try:
            for reply in call(request, timeout=timeout):
                replies.append(reply)
        except grpc.RpcError as e:
            return _failed(e, replies)
        return Outcome(grpc.StatusCode.OK, "", replies)

    def client_stream(
        self, method: str, requests: Iterable[bytes], timeout: float = RPC_TIMEOUT
    ) -> Outcome:
        call = self.channel.stream_unary(method, None, None)
        try:
            reply = call(iter(requests), timeout=timeout)
        except grpc.RpcError as e:
            return _failed(e)
        return Outcome(grpc.StatusCode.OK, "", [reply])

    def cancelled_stream(self, method: str, requests: list[bytes]) -> Outcome:
        """Send ``requests``, then cancel the call with the stream still open (a client that
        dies mid-upload). The server must treat it as never sent."""
        sent = threading.Event()
        release = threading.Event()

        def stream() -> Iterator[bytes]:
            yield from requests
            sent.set()
            release.wait(RPC_TIMEOUT)

        future = self.channel.stream_unary(method, None, None).future(stream(), timeout=RPC_TIMEOUT)
        sent.wait(RPC_TIMEOUT)
        time.sleep(0.02)  # let the messages reach the server before the cancel does
        future.cancel()  # type: ignore[no-untyped-call]
        release.set()
        try:
            future.result(timeout=RPC_TIMEOUT)
        except grpc.FutureCancelledError:
            return Outcome(grpc.StatusCode.CANCELLED, "cancelled by the client", [])
        except grpc.RpcError as e:
            return _failed(e)
        return Outcome(grpc.StatusCode.OK, "", [])


def _failed(e: grpc.RpcError, replies: list[bytes] | None = None) -> Outcome:
    assert isinstance(e, grpc.Call)
    return Outcome(e.code(), e.details() or "", replies or [])


def serving(raw: Raw) -> bool:
    request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    outcome = raw.unary("/grpc.health.v1.Health/Check", request)
    if outcome.code != grpc.StatusCode.OK:
        return False
    status = health_pb2.HealthCheckResponse.FromString(outcome.replies[0]).status
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def assert_precise(outcome: Outcome, allowed: Iterable[grpc.StatusCode], what: str) -> None:
    """The call succeeded or was refused with one of ``allowed`` and a message saying why."""
    codes = {grpc.StatusCode.OK, *allowed}
    assert outcome.code in codes, f"{what}: {outcome.code.name} {outcome.details!r}"
    if outcome.code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
        assert outcome.details.strip(), f"{what}: {outcome.code.name} without a message"


# --- the shard ---


def sgd() -> common_pb2.OptimizerConfig:
    return common_pb2.OptimizerConfig(name="sgd", lr=0.1)


def init_chunks(
    job_id: str, values: torch.Tensor, mode: str = "async", codec: str = ""
) -> list[bytes]:
    config = ps_pb2.ShardJobConfig(
        job_id=job_id,
        length=values.numel(),
        mode=mode,
        optimizer=sgd(),
        compression=common_pb2.CompressionConfig(name=codec),
    )
    return [
        ps_pb2.InitJobChunk(config=config).SerializeToString(),
        ps_pb2.InitJobChunk(data=bytes(wire.encode(values))).SerializeToString(),
    ]


@dataclass
class ShardUnderTest:
    server: RunningServer
    raw: Raw

    def stats(self, job_id: str = GUARDED) -> common_pb2.ShardJobStats:
        request = ps_pb2.JobStatsRequest(job_id=job_id).SerializeToString()
        outcome = self.raw.unary(PS + "GetJobStats", request)
        assert outcome.code == grpc.StatusCode.OK, outcome
        return common_pb2.ShardJobStats.FromString(outcome.replies[0])

    def fingerprint(self, *job_ids: str) -> dict[str, tuple[str, int]]:
        """Checksum (as repr, so NaN equals NaN) and version of the guarded job and of
        ``job_ids`` among the fixture's jobs."""
        out = {}
        for job_id in sorted({GUARDED, *job_ids} & set(FIXTURE_JOBS)):
            stats = self.stats(job_id)
            out[job_id] = (repr(stats.checksum), stats.version)
        return out

    def check(self, before: dict[str, tuple[str, int]], outcome: Outcome, what: str) -> None:
        """After a call: the shard answers health checks, and the jobs' parameters moved only
        if the call was a push that was applied."""
        assert serving(self.raw), f"{what}: the shard stopped serving"
        if not applied(outcome):
            after = self.fingerprint(*before)
            assert after == before, f"{what}: refused ({outcome.code.name}) but {before} -> {after}"


def applied(outcome: Outcome) -> bool:
    if outcome.code != grpc.StatusCode.OK or len(outcome.replies) != 1:
        return False
    try:
        reply = ps_pb2.PushReply.FromString(outcome.replies[0])
    except Exception:  # not a push reply
        return False
    return reply.outcome in (ps_pb2.PUSH_OUTCOME_APPLIED, ps_pb2.PUSH_OUTCOME_BUFFERED)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardUnderTest]:
    running = serve_shard(fuzz_settings(tmp_path_factory.mktemp("shard")), port=0)
    raw = Raw(f"127.0.0.1:{running.port}")
    try:
        for job_id, codec in FIXTURE_JOBS.items():
            values = torch.linspace(-1.0, 1.0, LENGTH)
            outcome = raw.client_stream(PS + "InitJob", init_chunks(job_id, values, codec=codec))
            assert outcome.code == grpc.StatusCode.OK, outcome
            members = ps_pb2.SetMembersRequest(job_id=job_id, worker_ids=[MEMBER], generation=1)
            outcome = raw.unary(PS + "SetMembers", members.SerializeToString())
            assert outcome.code == grpc.StatusCode.OK, outcome
        yield ShardUnderTest(running, raw)
    finally:
        raw.close()
        running.stop(0)


# --- the coordinator ---

MODEL_SOURCE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, n_in: int = 4, n_out: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
"""


@dataclass(frozen=True)
class Submission:
    spec: co_pb2.JobSpec
    blobs: dict[str, bytes]

    def chunks(self, chunk_bytes: int = 4096) -> list[bytes]:
        out = [co_pb2.SubmitJobChunk(spec=self.spec).SerializeToString()]
        for name, data in self.blobs.items():
            for i in range(0, len(data), chunk_bytes):
                blob = common_pb2.BlobChunk(blob=name, data=data[i : i + chunk_bytes])
                out.append(co_pb2.SubmitJobChunk(blob=blob).SerializeToString())
        return out


def tiny_submission() -> Submission:
    torch.manual_seed(0)
    kwargs = json.dumps({"n_in": 4, "n_out": 3})
    model = source.build(MODEL_SOURCE, "Tiny", kwargs)
    layout = ParamLayout.of_module(model)
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(24, 4)).astype(np.float32), rng.integers(0, 3, 24))
    test = (rng.normal(size=(9, 4)).astype(np.float32), rng.integers(0, 3, 9))
    spec = co_pb2.JobSpec(
        name="fuzz",
        model=co_pb2.ModelSpec(
            source=MODEL_SOURCE,
            class_name="Tiny",
            kwargs_json=kwargs,
            params=[co_pb2.ParamInfo(name=s.name, shape=s.shape) for s in layout.slots],
        ),
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1),
        epochs=2,
        batch_size=4,
        partitions=3,
        loss="cross_entropy",
    )
    blobs = {
        "dataset": Dataset.from_arrays(train, test).to_blob(),
        "initial_state": state.dumps(dict(model.state_dict())),
    }
    return Submission(spec, blobs)


@dataclass
class CoordinatorUnderTest:
    handle: CoordinatorHandle
    shard: RunningServer
    raw: Raw
    job_id: str  # a running job no refused call may touch
    submission: Submission

    def job(self, job_id: str) -> co_pb2.JobInfo:
        request = co_pb2.GetJobRequest(job_id=job_id).SerializeToString()
        outcome = self.raw.unary(CO + "GetJob", request)
        assert outcome.code == grpc.StatusCode.OK, outcome
        return co_pb2.JobInfo.FromString(outcome.replies[0])

    def fingerprint(self) -> tuple[list[str], str, int, int, float]:
        outcome = self.raw.unary(CO + "ListJobs", b"")
        assert outcome.code == grpc.StatusCode.OK, outcome
        jobs = sorted(j.job_id for j in co_pb2.ListJobsReply.FromString(outcome.replies[0]).jobs)
        job = self.job(self.job_id)
        return jobs, job.state, job.epoch, job.steps, job.progress

    def check(self, before: object, outcome: Outcome, what: str) -> None:
        assert serving(self.raw), f"{what}: the coordinator stopped serving"
        if outcome.code != grpc.StatusCode.OK:
            after = self.fingerprint()
            assert after == before, f"{what}: refused ({outcome.code.name}) but {before} -> {after}"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorUnderTest]:
    tmp = tmp_path_factory.mktemp("coordinator")
    shard_server = serve_shard(fuzz_settings(tmp / "shard"), port=0)
    settings = fuzz_settings(
        tmp / "state",
        shards=f"127.0.0.1:{shard_server.port}",
        max_active_jobs=64,
        max_active_jobs_per_client=64,
    )
    handle = serve_coordinator(settings, port=0)
    raw = Raw(f"127.0.0.1:{handle.port}")
    try:
        submission = tiny_submission()
        outcome = raw.client_stream(CO + "SubmitJob", submission.chunks())
        assert outcome.code == grpc.StatusCode.OK, outcome
        job_id = co_pb2.JobInfo.FromString(outcome.replies[0]).job_id
        under_test = CoordinatorUnderTest(handle, shard_server, raw, job_id, submission)
        wait_for("the job to run", lambda: under_test.job(job_id).state == "running")
        yield under_test
    finally:
        raw.close()
        handle.stop(0)
        shard_server.stop(0)
