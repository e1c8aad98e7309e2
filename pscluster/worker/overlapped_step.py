"""The first attempt of a one-step window with communication overlapped: the pull received
while forward runs (:mod:`pscluster.worker.pull_ahead`), the push sent while backward runs
(:mod:`pscluster.worker.overlap`). What the trainer needs from both, in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pscluster.config import Settings
from pscluster.shard_client import PushExtras, Snapshot
from pscluster.shard_client.client import push_header
from pscluster.shard_client.job import StreamedPush, start_streamed_push
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.local_sgd import PushStarter
from pscluster.worker.phases import PhaseClock
from pscluster.worker.pull_ahead import PullAhead
from pscluster.worker.runtime import JobRuntime


@dataclass(frozen=True)
class Started:
    """A push started during backward: its sequence number and its streams."""

    seq: int
    pushes: StreamedPush
    began: float  # perf_counter at its start

    def cancel(self) -> None:
        self.pushes.cancel()


def starter(
    rt: JobRuntime,
    worker_id: str,
    settings: Settings,
    snapshot: Callable[[], Snapshot],
    check: Callable[[], None],
) -> PushStarter | None:
    """What starts a push during backward (None: the job's pushes leave after it).
    ``snapshot`` gives the pull the update is computed on (it may still be arriving: the
    wait counts as pull time); ``check`` raises if the lease was lost meanwhile."""
    stream, clock = rt.local.stream, rt.local.clock
    if stream is None:
        return None
    timeout, chunk = settings.rpc_timeout_seconds, settings.chunk_bytes

    def start(buffer_delta: torch.Tensor | None, grad_scale: float, samples: int) -> Started:
        with clock.phase("pull"):
            snap = snapshot()
        check()
        seq, began = rt.next_seq(), time.perf_counter()
        extras = PushExtras(buffer_delta, grad_scale)

        def header(i: int) -> ps_pb2.PushHeader:
            r = rt.shards.ranges[i]
            h = push_header(rt.job_id, worker_id, seq, snap, i, r, samples, extras)
            h.bucket_bytes = stream.bucket_bytes()
            return h

        pushes = start_streamed_push(rt.shards, header, lambda i: stream.chunks(i, chunk), timeout)
        return Started(seq, pushes, began)

    return start


def pull_ahead(
    rt: JobRuntime, worker_id: str, settings: Settings, observe: Callable[[float], None]
) -> PullAhead | None:
    """Start the window's pull into the model's own parameters, for forward to run beside
    it; None where forward cannot (the job's pulls are not float32 straight into the model,
    or the model has buffers: they come whole with the pull's header). ``observe`` is told
    the seconds a pull that completed took."""
    if rt.gate is None or rt.pull_into is None:
        return None
    into, dtype = rt.pull_into, rt.pull_dtype
    timeout = settings.pull_wait_seconds + 5
    mins = list(rt.min_versions)

    def pull(progress: Callable[[int, int], None]) -> Snapshot:
        started = time.perf_counter()
        snap = rt.shards.pull(worker_id, mins, timeout, dtype, into=into, progress=progress)
        observe(time.perf_counter() - started)
        return snap

    return PullAhead([r.length for r in rt.shards.ranges]).start(pull)


def gate_time(clock: PhaseClock, ahead: PullAhead) -> None:
    """Forward's waits for its parameters were pull time, not computation."""
    clock.move(ahead.gated_seconds, "forward", "pull")
