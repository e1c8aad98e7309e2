"""Fixtures for the fuzz tests: a real shard and a real coordinator on loopback, each with a
job made before the fuzzing starts, and the invariants every fuzzed call must keep (the raw
calls, bytes in and bytes out: tests/fuzz/raw.py).

The servers are module-scoped: hypothesis runs many examples per test against one server, and
a fresh server per example would cost more than the thousands of calls together. Every check
therefore compares against the state read just before the call, not at setup.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from hypothesis import HealthCheck, settings

from pscluster.config import Settings
from pscluster.coordinator.main import CoordinatorHandle
from pscluster.coordinator.main import serve as serve_coordinator
from pscluster.server.main import serve as serve_shard
from pscluster.transport import wire
from pscluster.transport.server import RunningServer
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.raw import CO, PS, Outcome, Raw, serving
from tests.support import TinyJob, tiny_job, wait_for

MAX_MESSAGE = 1 << 20  # PSC_MAX_MESSAGE_BYTES in these tests: small, so "oversized" is cheap
GUARDED = "guarded"  # the shard job whose parameters no refused call may touch
SCRATCH = "scratch"  # a shard job fuzzed calls may change (membership, pushes)
MEMBER = "w1"
LENGTH = 64
# Jobs with a codec, so that compressed payloads get fuzzed too: job id -> codec.
CODEC_JOBS = {"c-fp16": "fp16", "c-int8": "int8", "c-topk": "topk", "c-dgc": "dgc"}
FIXTURE_JOBS = {GUARDED: "", SCRATCH: "", **CODEC_JOBS}

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


@dataclass
class CoordinatorUnderTest:
    handle: CoordinatorHandle
    shard: RunningServer
    raw: Raw
    job_id: str  # a running job no refused call may touch
    submission: TinyJob

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
        submission = tiny_job(model="Plain", name="fuzz", seed=0)
        outcome = raw.client_stream(CO + "SubmitJob", submission.serialized())
        assert outcome.code == grpc.StatusCode.OK, outcome
        job_id = co_pb2.JobInfo.FromString(outcome.replies[0]).job_id
        under_test = CoordinatorUnderTest(handle, shard_server, raw, job_id, submission)
        wait_for(lambda: under_test.job(job_id).state == "running", 20, what="the job to run")
        yield under_test
    finally:
        raw.close()
        handle.stop(0)
        shard_server.stop(0)
