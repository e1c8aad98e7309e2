"""Fault scenarios on a real local cluster, each measured the same way for tests and bench.

A scenario starts a cluster, submits the digits job, injects one fault while it trains, and
returns an :class:`Outcome`: how long the fault took to be noticed (detect), how long until
the cluster was whole again (recover), how many acknowledged updates the shards lack (lost)
and the job's final test accuracy. Tests assert on it; ``bench/faults.py`` tabulates it.

Acknowledged updates: in async mode every applied push bumps each shard's version by exactly
one, and a worker reports a step only once every shard has acknowledged its push. So a shard
whose final version is below the job's reported steps lost acknowledged updates, and one
above them applied a push twice (or applied pushes whose report was lost, e.g. a killed
worker's last unsent report: counted as ``unreported``, not as a fault of the shards).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from pscluster.client.errors import ClusterUnavailableError
from pscluster.client.info import JobInfo
from pscluster.client.local import LocalCluster
from pscluster.client.sdk import Client, Job
from pscluster.transport.channel import open_channel
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from tests.e2e.conftest import FAST
from tests.e2e.data import digits
from tests.e2e.models import DigitsMLP
from tests.faults.proxy import FaultProxy, Faults

T = TypeVar("T")

TARGET_ACCURACY = 0.95
HEARTBEAT = 1.0  # the default heartbeat; the worker timeout below is 3 of them
JOB_TIMEOUT = 600.0


@dataclass
class Outcome:
    scenario: str
    detect_seconds: float | None = None
    recover_seconds: float | None = None
    updates_lost: int | None = None
    final_accuracy: float | None = None
    state: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.state == "completed"
            and (self.final_accuracy or 0.0) >= TARGET_ACCURACY
            and self.updates_lost in (0, None)
        )

    def line(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        return (
            f"[{self.scenario}] state={self.state} detect={fmt(self.detect_seconds)}s "
            f"recover={fmt(self.recover_seconds)}s lost={self.updates_lost} "
            f"accuracy={fmt(self.final_accuracy)} {self.details}"
        )


# --- cluster and job helpers ---
def fault_env(**extra: str) -> dict[str, str]:
    """The e2e timeouts, with the default heartbeat and a worker timeout of 3 heartbeats."""
    return {
        **FAST,
        "PSC_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "PSC_WORKER_TIMEOUT_SECONDS": str(3 * HEARTBEAT),
        **extra,
    }


def start(cluster: LocalCluster, workers: int) -> LocalCluster:
    """Start with named workers (w0, w1, ...), so a killed process maps to a worker id."""
    cluster.start()
    for i in range(workers):
        cluster.add_worker(env={"PSC_WORKER_ID": f"w{i}"})
    cluster.wait_for_workers(workers, timeout=60)
    return cluster


def submit(client: Client, mode: str = "async", epochs: int = 12) -> Job:
    train, test = digits()
    return client.submit(
        model=DigitsMLP,
        train=train,
        test=test,
        mode=mode,
        staleness=2,
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        epochs=epochs,
        batch_size=16,
        partitions=6,
    )


def wait_until(what: str, check: Callable[[], bool], timeout: float, poll: float = 0.1) -> float:
    """Poll ``check`` until it holds; the monotonic time it did. TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return time.monotonic()
        except (grpc.RpcError, ClusterUnavailableError):
            pass  # the thing being waited for may be down right now
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def once_reachable(what: str, call: Callable[[], T], timeout: float = 60) -> T:
    """``call()``, retried while its server cannot be reached (a channel still backing off
    from a restart fails fast for up to its reconnect backoff, 5 s)."""
    result: list[T] = []

    def answered() -> bool:
        result.append(call())
        return True

    wait_until(what, answered, timeout)
    return result[0]


def raw_metrics(address: str, job_id: str) -> co_pb2.JobMetrics:
    """The job's metrics as the coordinator has them, shard stats whole (incl. duplicates)."""
    channel = open_channel(address)
    try:
        reply: co_pb2.JobMetrics = co_grpc.CoordinatorStub(channel).GetMetrics(
            co_pb2.GetJobRequest(job_id=job_id), timeout=30
        )
        return reply
    finally:
        channel.close()


def lost_updates(info: JobInfo, shards: list[common_pb2.ShardJobStats]) -> dict[str, int]:
    """Acknowledged steps the shards lack, and pushes applied but never reported (async)."""
    versions = [int(s.version) for s in shards]
    lost = max(0, info.steps - min(versions)) if versions else info.steps
    return {"lost": lost, "unreported": max(0, max(versions, default=0) - info.steps)}


def finish(job: Job, outcome: Outcome, address: str) -> Outcome:
    info = job.wait(timeout=JOB_TIMEOUT)
    metrics = raw_metrics(address, job.id)
    counts = lost_updates(info, list(metrics.shards))
    outcome.state = info.state
    outcome.final_accuracy = info.test_accuracy
    outcome.updates_lost = counts["lost"]
    outcome.details.update(
        steps=info.steps,
        versions=[int(s.version) for s in metrics.shards],
        unreported=counts["unreported"],
        duplicates=[int(s.pushes_duplicate) for s in metrics.shards],
    )
    return outcome


def status_workers(cluster: LocalCluster) -> dict[str, Any]:
    with cluster.client() as client:
        return {w.worker_id: w for w in client.status().workers}


# --- scenarios ---
def worker_death(path: Path) -> Outcome:
    """SIGKILL a training worker: detected by its silence, its lease re-leased."""
    outcome = Outcome("worker SIGKILL")
    cluster = start(LocalCluster(shards=2, workers=0, state_dir=path, env=fault_env()), 3)
    client = cluster.client()
    try:
        job = submit(client)
        wait_until("30 steps", lambda: job.info().steps >= 30, timeout=180)
        victim = status_workers(cluster)["w0"]
        task = victim.task  # e.g. "train e1/p3 b0-12"
        killed = time.monotonic()
        cluster.kill_worker(0, signal.SIGKILL)
        dead = wait_until(
            "w0 declared dead", lambda: not status_workers(cluster)["w0"].alive, timeout=60
        )
        outcome.detect_seconds = dead - killed
        outcome.details["task_at_kill"] = task
        if task.startswith("train"):
            unit = task.split()[1]  # "e1/p3": the lease's epoch and partition
            epoch = int(unit[1:].split("/")[0])

            def released() -> bool:
                others = status_workers(cluster).values()
                taken = any(w.task.split()[1:2] == [unit] for w in others if w.worker_id != "w0")
                return taken or job.info().epoch > epoch

            outcome.recover_seconds = wait_until("the lease re-leased", released, 120) - killed
        outcome.details["heartbeat"] = HEARTBEAT
        return finish(job, outcome, cluster.address)
    finally:
        client.close()
        cluster.stop()


def coordinator_restart(path: Path, outage: float = 6.0) -> Outcome:
    """SIGKILL the coordinator mid-job, restart it ``outage`` s later on the same state."""
    outcome = Outcome(f"coordinator SIGKILL, {outage:g} s down")
    cluster = start(LocalCluster(shards=2, workers=0, state_dir=path, env=fault_env()), 3)
    client = cluster.client()
    watcher: dict[str, Any] = {}
    try:
        job = submit(client)
        wait_until("30 steps", lambda: job.info().steps >= 30, timeout=180)

        # A user following the job across the outage: its handle is made (one GetJob) before
        # the kill, so that only the waiting happens while the coordinator is away.
        watching = cluster.client()
        watched = watching.job(job.id)

        def watch() -> None:
            try:
                watcher["info"] = watched.wait(timeout=JOB_TIMEOUT, poll=0.2)
            except Exception as e:  # reported by the caller
                watcher["error"] = repr(e)
            finally:
                watching.close()

        following = threading.Thread(target=watch, daemon=True)
        following.start()
        before = job.info()
        assert cluster.coordinator is not None
        killed = time.monotonic()
        cluster.kill(cluster.coordinator, signal.SIGKILL)
        time.sleep(outage)
        cluster.restart(cluster.coordinator)
        up = time.monotonic()
        outcome.detect_seconds = up - killed  # down for this long, restart included
        after = once_reachable("the restarted coordinator", job.info)

        def whole() -> bool:
            workers = status_workers(cluster).values()
            alive = [w for w in workers if w.alive and w.last_heartbeat_age < 2 * HEARTBEAT]
            return len(alive) >= 3 and job.info().steps > after.steps

        outcome.recover_seconds = wait_until("workers back and training", whole, 120) - up
        log = cluster.coordinator.log_path.read_text(errors="replace")
        outcome.details.update(
            steps_before_kill=before.steps,
            steps_after_restart=after.steps,
            leases_restored=log.count("restored") - log.count("not restored"),
        )
        outcome = finish(job, outcome, cluster.address)
        following.join(timeout=60)
        outcome.details["watcher"] = (
            "followed to the end"
            if watcher.get("info") is not None and watcher["info"].state == "completed"
            else watcher.get("error", "still waiting")
        )
        if after.steps < before.steps:
            outcome.updates_lost = (outcome.updates_lost or 0) + before.steps - after.steps
        return outcome
    finally:
        client.close()
        cluster.stop()


class ProxiedCluster(LocalCluster):
    """A local cluster whose shard ``index`` is reached through ``proxy`` by everyone: the
    shard advertises the proxy's address, the coordinator and workers dial it."""

    def __init__(self, proxy: FaultProxy, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxy = proxy
        self.proxied = index

    @property
    def shard_addresses(self) -> list[str]:
        addresses = super().shard_addresses
        if len(addresses) > self.proxied:
            addresses[self.proxied] = self.proxy.address
        return addresses

    def _server_handle(self, role: str, index: int, port: int) -> Any:
        handle = super()._server_handle(role, index, port)
        if role == "shard" and index == self.proxied:
            handle.env["PSC_ADVERTISE"] = self.proxy.address
            self.proxy.upstream = handle.address or ""
        return handle


FLAKY = Faults(latency=0.002, drop_rate=0.002, cut_reply_rate=0.02)


def flaky_shard(path: Path, faults: Faults = FLAKY) -> Outcome:
    """One shard behind a proxy that delays, drops connections and loses replies."""
    outcome = Outcome("flaky network to one shard")
    with FaultProxy(faults=faults, seed=5) as proxy:
        cluster = ProxiedCluster(proxy, 1, shards=2, workers=0, state_dir=path, env=fault_env())
        start(cluster, 3)
        client = cluster.client()
        try:
            # 20 epochs, as the demo job: async training through a lossy link ended a 12-epoch
            # job anywhere between 0.92 and 0.97, its last evaluation being one noisy sample.
            job = submit(client, epochs=20)
            outcome = finish(job, outcome, cluster.address)
        finally:
            client.close()
            cluster.stop()
        c = proxy.counters
        outcome.details.update(
            proxy_connections=c.connections, replies_cut=c.replies_cut, dropped=c.dropped
        )
    return outcome


def shard_restart(path: Path, outage: float = 3.0) -> Outcome:
    """SIGKILL a shard mid-job and restart it: it must come back with every acknowledged
    update (its write-ahead log and checkpoints)."""
    outcome = Outcome(f"shard SIGKILL, {outage:g} s down")
    cluster = start(LocalCluster(shards=2, workers=0, state_dir=path, env=fault_env()), 3)
    client = cluster.client()
    try:
        job = submit(client)
        wait_until("30 steps", lambda: job.info().steps >= 30, timeout=180)
        victim = cluster.shard_handles[1]
        killed = time.monotonic()
        cluster.kill(victim, signal.SIGKILL)

        def unhealthy() -> bool:
            with cluster.client() as client:
                return not all(s.healthy for s in client.status().shards)

        outcome.detect_seconds = wait_until("the shard reported down", unhealthy, 60) - killed
        time.sleep(max(0.0, outage - (time.monotonic() - killed)))
        cluster.restart(victim)
        up = time.monotonic()
        before = job.info().steps
        outcome.recover_seconds = (
            wait_until("steps again", lambda: job.info().steps > before + 5, 120) - up
        )
        return finish(job, outcome, cluster.address)
    finally:
        client.close()
        cluster.stop()
