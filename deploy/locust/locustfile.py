"""Locust load test of a pscluster: workers pulling and pushing, clients asking for status.

Two kinds of users speak gRPC to the cluster with the same code the real processes use:

* ``WorkerUser`` is a training worker of one job: each step pulls the whole model from every
  shard (:class:`pscluster.shard_client.JobShards`, the worker's own class), waits
  ``--compute-ms`` as if computing a gradient, encodes it with the job's codec
  (:class:`pscluster.worker.compressed.PushEncoder`) and pushes it to every shard. A push is a
  failure unless every shard applied it.
* ``ClientUser`` is an SDK user (:class:`pscluster.client.sdk.Client`): it submits a small
  job at start and then polls GetJob, GetMetrics and ClusterStatus, and now and then submits
  and cancels another job. There are ``--client-users`` of them (default 4: a coordinator
  limits the active jobs of one submitter, 8 by default, and every user here is one host).

The job the workers train is made directly on the shards at test start (InitJob + SetMembers
with the locust users' worker ids, as the coordinator does for a submitted job; see
``load_job.py``) and dropped at test stop: the coordinator cannot know the locust users as
workers, and the load that matters, the shards' pull and push path, is the same either way.

Each call is recorded as a locust request (request_type "grpc") by firing
``environment.events.request``, locust's documented way to test a non-HTTP system; grpc is
made gevent-friendly with ``grpc.experimental.gevent.init_gevent()`` before any channel is
opened. Only one locust process is supported (worker ids are handed out by a counter here).

Shard RSS is sampled every ``--rss-every`` seconds from job creation to test stop and written
to ``--rss-out`` (default ``<--csv prefix>_rss.json``): pids from a local cluster's
``--state-dir``, or ``docker stats`` for containers named like ``--docker-shards``.

    locust -f deploy/locust/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --coordinator 127.0.0.1:50051 --model-mb 1 --codec none --csv bench/results/load
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import grpc.experimental.gevent as grpc_gevent  # type: ignore[import-not-found]
import numpy as np
import torch
from load_job import LoadJob, create_job, drop_job
from load_model import TinyNet
from load_rss import RssSampler, local_shard_pids
from load_timing import record
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from pscluster.client.sdk import Client, Job
from pscluster.compression import CompressionSettings, codec_name
from pscluster.config import Settings
from pscluster.shard_client import JobShards, ShardClient, ShardError
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.compressed import PushEncoder

# Before any channel: grpc's polling must yield to gevent, or one call blocks every user.
grpc_gevent.init_gevent()

RPC_TIMEOUT_SECONDS = 30.0
BATCH_SIZE = 64


@dataclass
class LoadRun:
    """What the users of one run share: the job, its gradient, the ids left to hand out.

    Locust builds users from classes and passes them only the environment, so run-wide state
    lives at module level; one locust process runs one test at a time.
    """

    job: LoadJob | None = None
    gradient: torch.Tensor | None = None
    next_member: itertools.count[int] = field(default_factory=itertools.count)
    sampler: RssSampler = field(default_factory=RssSampler)
    started: float = 0.0
    sampling: gevent.Greenlet | None = None
    error: str = ""


RUN = LoadRun()


def _options(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("this locustfile needs locust's command line options")
    return environment.parsed_options


def _settings() -> Settings:
    # The cluster's PSC_* settings (token, TLS, chunk size), with a deadline fit for a test.
    return Settings(rpc_timeout_seconds=RPC_TIMEOUT_SECONDS)


def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("pscluster")
    group.add_argument(
        "--coordinator",
        default=os.environ.get("PSC_COORDINATOR", ""),
        help="coordinator host:port (default PSC_COORDINATOR)",
    )
    group.add_argument(
        "--shards",
        default=os.environ.get("PSC_SHARDS", ""),
        help="shard host:port list, comma separated (default PSC_SHARDS, else the coordinator's)",
    )
    group.add_argument("--model-mb", type=float, default=1.0, help="model size in MiB (float32)")
    group.add_argument("--codec", default="none", help="push compression: none, fp16, int8, ...")
    group.add_argument(
        "--compute-ms", type=float, default=50.0, help="a worker's compute time per step"
    )
    group.add_argument(
        "--step-seconds",
        type=float,
        default=0.0,
        help="a worker starts a step every this many seconds (0: back to back, a closed loop)",
    )
    group.add_argument("--client-users", type=int, default=4, help="how many users are clients")
    group.add_argument("--state-dir", default="", help="local cluster state dir (shard pids)")
    group.add_argument("--docker-shards", default="", help="sample RSS of containers named so")
    group.add_argument("--rss-every", type=float, default=10.0, help="seconds between samples")
    group.add_argument("--rss-out", default="", help="RSS report (default <csv>_rss.json)")


def _configure(environment: Environment, **_: Any) -> None:
    options = _options(environment)
    codec_name(options.codec)  # an unknown codec fails here, naming the choices
    if options.client_users < 0:
        raise ValueError(f"--client-users must be 0 or more, got {options.client_users}")
    ClientUser.fixed_count = options.client_users
    # Loading this file (torch, grpc) blocks for seconds before gevent's loop runs, and libev
    # caches its clock: without a refresh, locust's --run-time timer is armed that many
    # seconds in the past and the test ends early by as much.
    gevent.get_hub().loop.update_now()


def _shard_addresses(options: Any, settings: Settings) -> list[str]:
    listed = [s.strip() for s in options.shards.split(",") if s.strip()]
    if listed:
        return listed
    if not options.coordinator:
        raise ValueError("no cluster given: pass --coordinator (or PSC_COORDINATOR) or --shards")
    with Client(options.coordinator, settings=settings) as client:
        return [s.address for s in client.status().shards]


def _create_job(environment: Environment, **_: Any) -> None:
    options = _options(environment)
    settings = _settings()
    try:
        shards = _shard_addresses(options, settings)
        RUN.job = create_job(settings, shards, options.model_mb, options.codec, options.num_users)
    except Exception as e:  # reported by every worker user as its failure, and in the log
        RUN.error = f"could not create the load job: {e}"
        environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="grpc", name="InitJob", response_time=0.0, response_length=0,
            exception=e, context={},
        )  # fmt: skip
        return
    RUN.gradient = torch.randn(RUN.job.size, generator=torch.Generator().manual_seed(1)) * 1e-3
    RUN.next_member = itertools.count()
    pids = local_shard_pids(options.state_dir) if options.state_dir else {}
    RUN.sampler = RssSampler(pids, options.docker_shards)
    RUN.started = time.monotonic()
    if RUN.sampler.enabled:
        RUN.sampler.sample(0.0)
        RUN.sampling = gevent.spawn(_sample_every, float(options.rss_every))


def _sample_every(seconds: float) -> None:
    while True:
        gevent.sleep(max(0.5, seconds))
        RUN.sampler.sample(time.monotonic() - RUN.started)


def _drop_job(environment: Environment, **_: Any) -> None:
    options = _options(environment)
    if RUN.sampling is not None:
        RUN.sampling.kill()
        RUN.sampling = None
    if RUN.sampler.enabled:
        RUN.sampler.sample(time.monotonic() - RUN.started)
        out = options.rss_out or (f"{options.csv_prefix}_rss.json" if options.csv_prefix else "")
        if out:
            report = {"model_mb": options.model_mb, "codec": options.codec, **RUN.sampler.report()}
            Path(out).write_text(json.dumps(report, indent=2) + "\n")
    if RUN.job is not None:
        for problem in drop_job(_settings(), RUN.job):
            print(f"dropping the load job: {problem}")
        RUN.job = None


# Registered by call rather than by decorator: locust's add_listener is untyped.
for _hook, _listener in (
    (events.init_command_line_parser, _arguments),
    (events.init, _configure),
    (events.test_start, _create_job),
    (events.test_stop, _drop_job),
):
    _hook.add_listener(_listener)  # type: ignore[no-untyped-call]


class WorkerUser(User):
    """A training worker of the load job: pull everything, compute, push everything.

    Back to back by default: the users then offer more than the cluster can take, and the run
    measures its peak throughput (latency is then queueing). With ``--step-seconds`` each user
    starts a step at that period, as locust's ``constant_pacing`` does: a fixed offered load
    (users / period steps per second), at which latency is measured.
    """

    def wait_time(self) -> float:
        if self.step_seconds <= 0:
            return 0.0
        return max(0.0, self.step_seconds - (time.monotonic() - self.step_started))

    def on_start(self) -> None:
        job = RUN.job
        if job is None:
            raise StopUser(RUN.error or "no load job")
        index = next(RUN.next_member)
        if index >= len(job.members):
            raise StopUser(f"more worker users than the {len(job.members)} job members")
        self.worker_id = job.members[index]
        options = _options(self.environment)
        self.compute_seconds = float(options.compute_ms) / 1000.0
        self.step_seconds = float(options.step_seconds)
        self.step_started = time.monotonic()
        self.label = f"{options.model_mb:g}MB"
        self.client = ShardClient(_settings())
        self.shards = JobShards(self.client, job.job_id, job.ranges)
        ranges = [(r.start, r.length) for r in job.ranges]
        self.encoder = PushEncoder(CompressionSettings(name=job.codec), ranges)
        self.seq = 0

    def on_stop(self) -> None:
        if hasattr(self, "client"):
            self.client.close()

    @task
    def step(self) -> None:
        self.step_started = time.monotonic()
        gradient = RUN.gradient
        if gradient is None:
            raise StopUser("the load job is gone")
        snapshot = record(
            self.environment,
            f"Pull {self.label}",
            lambda: self.shards.pull(self.worker_id, None, RPC_TIMEOUT_SECONDS),
            length=lambda s: s.values.numel() * 4,
        )
        if snapshot is None:
            return
        gevent.sleep(self.compute_seconds)
        encoded = self.encoder.encode(gradient, epoch=0)
        self.seq += 1
        payloads = {i: e.payload for i, e in encoded.items()}
        replies = record(
            self.environment,
            f"Push {self.label} {self.encoder.name}",
            lambda: self.shards.push(
                self.worker_id,
                self.seq,
                payloads,
                self.encoder.name,
                snapshot,
                BATCH_SIZE,
                RPC_TIMEOUT_SECONDS,
            ),
            length=lambda _: sum(len(p) for p in payloads.values()),
            check=_not_applied,
        )
        for i, reply in (replies or {}).items():  # each shard's codec state on its own answer
            if isinstance(reply, ps_pb2.PushReply) and reply.outcome == ps_pb2.PUSH_OUTCOME_APPLIED:
                self.encoder.commit(i, encoded[i])


def _not_applied(replies: dict[int, ps_pb2.PushReply | ShardError]) -> str | None:
    """An async push must be applied by every shard; otherwise say which and why."""
    for i, reply in sorted(replies.items()):
        if isinstance(reply, ShardError):
            return f"shard {i}: {reply}"
        if reply.outcome != ps_pb2.PUSH_OUTCOME_APPLIED:
            outcome = ps_pb2.PushOutcome.Name(reply.outcome)
            return f"shard {i} answered {outcome}: {reply.reason}"
    return None


class ClientUser(User):
    """An SDK user: one job of its own to watch, status calls, now and then a new job."""

    wait_time = constant(0.5)
    fixed_count = 4  # set from --client-users at init

    def on_start(self) -> None:
        options = _options(self.environment)
        if not options.coordinator:
            raise StopUser("client users need --coordinator (or PSC_COORDINATOR)")
        self.client = Client(options.coordinator, settings=_settings())
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        # Train and test are separate arrays: the payload refuses tensors that share memory.
        self.train, self.test = (x, y), (x.copy(), y.copy())
        self.job: Job | None = self._submit()

    def on_stop(self) -> None:
        if hasattr(self, "client"):
            if self.job is not None:
                record(self.environment, "CancelJob", self.job.cancel)
            self.client.close()

    def _submit(self) -> Job | None:
        return record(
            self.environment,
            "SubmitJob",
            lambda: self.client.submit(
                TinyNet, train=self.train, test=self.test, epochs=1, batch_size=16, name="locust"
            ),
        )

    @task(6)
    def get_job(self) -> None:
        if self.job is not None:
            record(self.environment, "GetJob", self.job.info)

    @task(3)
    def get_metrics(self) -> None:
        if self.job is not None:
            record(self.environment, "GetMetrics", self.job.metrics)

    @task(3)
    def cluster_status(self) -> None:
        record(self.environment, "ClusterStatus", self.client.status)

    @task(1)
    def submit_and_cancel(self) -> None:
        job = self._submit()
        if job is not None:
            record(self.environment, "CancelJob", job.cancel)
