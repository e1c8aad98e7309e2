"""Simulated workers for bench/coordinator_scale.py: one OS process, many workers as threads.

Each simulated worker makes exactly the coordinator calls a real one makes
(pscluster/worker/agent.py and progress.py), over its own channel built by the project's
``open_channel`` (its own TCP connection: a local subchannel pool, as separate worker
processes would have), with no shard traffic and no compute:

- RegisterWorker (re-registering under its previous id, retried with the agent's backoff);
- a heartbeat thread: Heartbeat every ``heartbeat_seconds`` of the reply, with the agent's
  deadline (max(heartbeat, 2 s)); ``known`` false or NOT_FOUND means the coordinator declared
  it dead while it was heartbeating: a false death, and it registers again;
- a loop: AcquireTask; a train lease gets one ReportProgress (a StepMetric and the lease's
  LeaseProgress, as the agent's reporter sends when a one-batch lease ends) and CompleteTask;
  an eval lease CompleteTask with metrics and shard versions; a wait sleeps ``wait_seconds``.
  CompleteTask is retried on UNAVAILABLE / DEADLINE_EXCEEDED while the lease is alive, as the
  agent does through a coordinator outage.

Every call is recorded with ``time.monotonic()`` times (one clock for every process on the
machine), every lease granted and every completion acknowledged, so that the parent computes
rates, latencies and the lost-lease check over any window. Protocol with the parent: one line
``ready <registered> <seconds>`` on stdout once every worker registered, then ``stop`` (or EOF)
on stdin ends the run, and the records are written as JSON to ``--out``.

    python -m bench.sim_workers --address 127.0.0.1:50051 --count 125 --out /tmp/sim-0.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import sim_requests  # noqa: E402
from pscluster.config import Settings  # noqa: E402
from pscluster.transport.channel import open_channel  # noqa: E402
from pscluster.transport.retry import Backoff, period  # noqa: E402
from pscluster.v1 import coordinator_pb2 as co_pb2  # noqa: E402
from pscluster.v1 import coordinator_pb2_grpc as co_grpc  # noqa: E402

DEADLINE = 10.0  # seconds, every call but Heartbeat (whose deadline is the agent's)
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
KINDS = {co_pb2.TASK_KIND_TRAIN: "train", co_pb2.TASK_KIND_EVAL: "eval"}
Reply = TypeVar("Reply")


class Records:
    """What one process saw; lists of plain lists (JSON), appended from many threads."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []  # rpc, t_start, t_end, code ("OK" or the status name)
        self.acquires: list[list[Any]] = []  # t_start, t_end, kind, held_seconds, wait_seconds
        # t_start, t_end, worker, kind, job, epoch, partition, first_batch, end_batch, lease
        self.grants: list[list[Any]] = []
        self.acks: list[list[Any]] = []  # t_end, then as grants from worker on
        self.deaths: list[list[Any]] = []  # t, worker, how ("heartbeat" | "acquire")
        self.registrations: list[list[Any]] = []  # t_end, worker, first registration

    def as_dict(self) -> dict[str, list[list[Any]]]:
        return dict(vars(self))


class SimWorker:
    def __init__(self, address: str, rec: Records, stop: threading.Event, args: Any) -> None:
        self.rec = rec
        self.stop = stop
        self.samples = args.samples
        self.task_seconds = float(getattr(args, "task_seconds", 0.0))
        self.shards = args.shards
        extra = [("grpc.use_local_subchannel_pool", 1)]
        self.channel = open_channel(address, Settings(), extra_options=extra)
        self.stub = co_grpc.CoordinatorStub(self.channel)
        self.worker_id = ""
        self.heartbeat_seconds = 1.0
        self.generation = 0  # bumped by each registration: one death per generation
        self.dying = False  # a death was counted and the registration is under way
        self.lease = ""
        self.revoked: set[str] = set()
        self.lock = threading.Lock()
        self.registering = threading.Lock()

    def call(self, rpc: str, method: Callable[..., Reply], request: Any, timeout: float) -> Reply:
        """One call, timed and recorded; RpcError propagates to the caller."""
        start = time.monotonic()
        try:
            reply = method(request, timeout=timeout)
        except grpc.RpcError as e:
            self.rec.calls.append([rpc, start, time.monotonic(), e.code().name])  # type: ignore[attr-defined]
            raise
        self.rec.calls.append([rpc, start, time.monotonic(), "OK"])
        return reply

    # --- membership ---
    def register(self, stale: int | None = None) -> None:
        """Register (again), retrying with the agent's backoff; with ``stale``, only if no
        registration happened since that generation (the other thread may have just done it)."""
        with self.registering:
            if stale is not None and stale != self.generation:
                return
            backoff = Backoff(0.2, 5.0)
            while not self.stop.is_set():
                request = sim_requests.registration(self.worker_id)
                try:
                    reply = self.call("RegisterWorker", self.stub.RegisterWorker, request, DEADLINE)
                except grpc.RpcError:
                    backoff.wait(self.stop)
                    continue
                with self.lock:
                    first = not self.worker_id
                    self.worker_id = reply.worker_id
                    self.revoked.clear()
                    self.generation += 1
                    self.dying = False
                self.heartbeat_seconds = reply.heartbeat_seconds or 1.0
                self.rec.registrations.append([time.monotonic(), reply.worker_id, first])
                return

    def died(self, generation: int, how: str) -> None:
        """The coordinator no longer knows us: count it once per registration, register."""
        with self.lock:
            # Both threads may hear it: the first one counts it.
            if generation == self.generation and not self.dying:
                self.dying = True
                self.revoked.add(self.lease)
                self.rec.deaths.append([time.monotonic(), self.worker_id, how])
        self.register(stale=generation)

    def heartbeats(self) -> None:
        while not self.stop.wait(period(self.heartbeat_seconds)):  # as the agent's
            generation = self.generation
            request = co_pb2.HeartbeatRequest(worker_id=self.worker_id)
            try:
                reply = self.call(
                    "Heartbeat", self.stub.Heartbeat, request, max(self.heartbeat_seconds, 2.0)
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    self.died(generation, "heartbeat")
                continue
            with self.lock:
                self.revoked.update(reply.revoked_leases)
            if not reply.known:
                self.died(generation, "heartbeat")

    def alive(self, lease_id: str) -> bool:
        with self.lock:
            return not self.stop.is_set() and lease_id not in self.revoked

    # --- work ---
    def run(self, registered: Callable[[], None]) -> None:
        self.register()
        registered()
        beat = threading.Thread(target=self.heartbeats, name="heartbeat", daemon=True)
        beat.start()
        backoff = Backoff(0.2, 5.0)
        while not self.stop.is_set():
            generation = self.generation
            request = co_pb2.AcquireTaskRequest(worker_id=self.worker_id)
            start = time.monotonic()
            try:
                task = self.call("AcquireTask", self.stub.AcquireTask, request, DEADLINE)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    self.died(generation, "acquire")
                else:
                    backoff.wait(self.stop)
                continue
            end = time.monotonic()
            backoff.reset()
            kind = KINDS.get(task.kind, "wait")
            held = float(getattr(task, "held_seconds", 0.0))
            self.rec.acquires.append([start, end, kind, held, task.wait_seconds])
            if kind == "wait":
                if task.wait_seconds > 0:
                    self.stop.wait(task.wait_seconds)
                continue
            lease = sim_requests.lease_fields(self.worker_id, kind, task)
            self.rec.grants.append([start, end, *lease])
            with self.lock:
                self.lease = task.lease_id
            try:
                if self.work(task):
                    self.rec.acks.append([time.monotonic(), *lease])
            finally:
                with self.lock:
                    self.lease = ""
        beat.join(timeout=5.0)

    def work(self, task: co_pb2.Task) -> bool:
        """Report and complete the lease; True once its completion is acknowledged."""
        if task.kind == co_pb2.TASK_KIND_TRAIN:
            report = sim_requests.progress(self.worker_id, task, self.samples)
            with contextlib.suppress(grpc.RpcError):  # never fatal, as in the agent's reporter
                self.call("ReportProgress", self.stub.ReportProgress, report, DEADLINE)
            # Training time varies from lease to lease (batch counts, the machine): uniform
            # around the mean, so that workers started together do not stay in step.
            busy = self.task_seconds * random.uniform(0.5, 1.5)
            if self.task_seconds > 0 and self.stop.wait(busy):
                return False  # the run ended while "training"
            complete = sim_requests.train_completion(self.worker_id, task, self.samples)
        else:
            complete = sim_requests.eval_completion(self.worker_id, task, self.shards)
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                self.call("CompleteTask", self.stub.CompleteTask, complete, DEADLINE)
                return True
            except grpc.RpcError as e:
                if e.code() not in TRANSIENT:  # type: ignore[attr-defined]
                    return False  # expired, revoked, unknown worker: the work is discarded
            if backoff.wait(self.stop) or not self.alive(task.lease_id):
                return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the coordinator's host:port")
    parser.add_argument("--count", type=int, required=True, help="workers in this process")
    parser.add_argument("--shards", type=int, default=2, help="the job's shards (eval versions)")
    parser.add_argument("--samples", type=int, default=2, help="samples per train lease")
    parser.add_argument(
        "--task-seconds",
        type=float,
        default=0.0,
        help="a train lease's mean simulated training time (uniform in 0.5-1.5x)",
    )
    parser.add_argument("--out", type=Path, required=True, help="where the records go (JSON)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    rec = Records()
    stop = threading.Event()
    started = time.monotonic()
    count = [0]
    count_lock = threading.Lock()

    def registered() -> None:
        with count_lock:
            count[0] += 1
            if count[0] == args.count:
                print(f"ready {count[0]} {time.monotonic() - started:.3f}", flush=True)

    workers = [SimWorker(args.address, rec, stop, args) for _ in range(args.count)]
    threads = [
        threading.Thread(target=w.run, args=(registered,), name=f"sim-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    sys.stdin.readline()  # "stop", or EOF when the parent goes away
    stop.set()
    deadline = time.monotonic() + 2 * DEADLINE
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    still = sum(t.is_alive() for t in threads)
    for w in workers:
        w.channel.close()
    out = {"pid": os.getpid(), "workers": args.count, "unfinished_threads": still, **rec.as_dict()}
    args.out.write_text(json.dumps(out))
    print("done", flush=True)


if __name__ == "__main__":
    main()
