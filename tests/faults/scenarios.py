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
from pathlib import Path
from typing import Any

from pscluster.client.local import LocalCluster
from tests.faults.harness import (
    HEARTBEAT,
    JOB_TIMEOUT,
    TARGET_ACCURACY,
    Outcome,
    ProxiedCluster,
    fault_env,
    finish,
    once_reachable,
    reached,
    start,
    status_workers,
    submit,
)
from tests.faults.proxy import FaultProxy, Faults

# bench/faults.py and the tests take these from here, with the scenarios.
__all__ = [
    "HEARTBEAT",
    "TARGET_ACCURACY",
    "Outcome",
    "coordinator_restart",
    "flaky_shard",
    "shard_restart",
    "worker_death",
]


# --- scenarios ---
def worker_death(path: Path) -> Outcome:
    """SIGKILL a training worker: detected by its silence, its lease re-leased."""
    outcome = Outcome("worker SIGKILL")
    cluster = start(LocalCluster(shards=2, workers=0, state_dir=path, env=fault_env()), 3)
    client = cluster.client()
    try:
        job = submit(client)
        reached(lambda: job.info().steps >= 30, 180, what="30 steps")
        victim = status_workers(cluster)["w0"]
        task = victim.task  # e.g. "train e1/p3 b0-12"
        killed = time.monotonic()
        cluster.kill_worker(0, signal.SIGKILL)
        dead = reached(lambda: not status_workers(cluster)["w0"].alive, 60, what="w0 declared dead")
        outcome.detect_seconds = dead - killed
        outcome.details["task_at_kill"] = task
        if task.startswith("train"):
            unit = task.split()[1]  # "e1/p3": the lease's epoch and partition
            epoch = int(unit[1:].split("/")[0])

            def released() -> bool:
                others = status_workers(cluster).values()
                taken = any(w.task.split()[1:2] == [unit] for w in others if w.worker_id != "w0")
                return taken or job.info().epoch > epoch

            outcome.recover_seconds = reached(released, 120, what="the lease re-leased") - killed
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
        reached(lambda: job.info().steps >= 30, 180, what="30 steps")

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
        time.sleep(outage)  # the outage under test: the coordinator stays down this long
        cluster.restart(cluster.coordinator)
        up = time.monotonic()
        outcome.detect_seconds = up - killed  # down for this long, restart included
        after = once_reachable("the restarted coordinator", job.info)

        def whole() -> bool:
            workers = status_workers(cluster).values()
            alive = [w for w in workers if w.alive and w.last_heartbeat_age < 2 * HEARTBEAT]
            return len(alive) >= 3 and job.info().steps > after.steps

        outcome.recover_seconds = reached(whole, 120, what="workers back and training") - up
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


FLAKY = Faults(latency=0.002, drop_rate=0.002, cut_reply_rate=0.02)


def flaky_shard(path: Path, faults: Faults = FLAKY) -> Outcome:
    """One shard behind a proxy that delays, drops connections and loses replies."""
    outcome = Outcome("flaky network to one shard")
    with FaultProxy(faults=faults, seed=5) as proxy:
        cluster = ProxiedCluster(proxy, 1, shards=2, workers=0, state_dir=path, env=fault_env())
        start(cluster, 3)
        client = cluster.client()
        try:
            job = submit(client)
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
        reached(lambda: job.info().steps >= 30, 180, what="30 steps")
        victim = cluster.shard_handles[1]
        killed = time.monotonic()
        cluster.kill(victim, signal.SIGKILL)

        def unhealthy() -> bool:
            with cluster.client() as client:
                return not all(s.healthy for s in client.status().shards)

        outcome.detect_seconds = reached(unhealthy, 60, what="the shard reported down") - killed
        time.sleep(max(0.0, outage - (time.monotonic() - killed)))  # the rest of the outage
        cluster.restart(victim)
        up = time.monotonic()
        before = job.info().steps
        outcome.recover_seconds = (
            reached(lambda: job.info().steps > before + 5, 120, what="steps again") - up
        )
        return finish(job, outcome, cluster.address)
    finally:
        client.close()
        cluster.stop()
