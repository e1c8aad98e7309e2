"""The cluster under the fault scenarios (tests/faults/scenarios.py): how it is started, the
job it trains, and how an :class:`Outcome` is measured at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from tests.faults.proxy import FaultProxy
from tests.support import UNREACHABLE, wait_for

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


def submit(client: Client, mode: str = "async", epochs: int = 20) -> Job:
    # 20 epochs, as the demo job: async training through a fault ended a 12-epoch job
    # anywhere between 0.92 and 0.97 (0.947 once after a coordinator restart), its last
    # evaluation being one noisy sample.
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


def reached(check: Callable[[], object], timeout: float, *, what: str) -> float:
    """When ``check`` first held (monotonic), polled every 0.1 s (the resolution of the times
    measured); a server that cannot be reached right now counts as "not yet"."""
    return wait_for(check, timeout, what=what, poll=0.1, tolerate=UNREACHABLE)


def once_reachable(what: str, call: Callable[[], T], timeout: float = 60) -> T:
    """``call()``, retried while its server cannot be reached (a channel still backing off
    from a restart fails fast for up to its reconnect backoff, 5 s)."""
    result: list[T] = []

    def answered() -> bool:
        result.append(call())
        return True

    reached(answered, timeout, what=what)
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
