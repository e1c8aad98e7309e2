"""The compose cluster's shape: gRPC health, one published port on loopback, an internal network."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pscluster.client.sdk import Client
from tests.containers.compose import ComposeProject, run_docker
from tests.support import UNREACHABLE, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow]

SERVERS = ("ps", "coordinator")

# Run inside a container: try one TCP connection, print the outcome instead of raising.
CONNECT = """
import socket
try:
    socket.create_connection(({host!r}, {port}), timeout=3).close()
    print("connected")
except OSError as e:
    print(f"failed: {{e}}")
"""


def test_servers_are_healthy_through_the_grpc_health_protocol(compose: ComposeProject) -> None:
    for service in SERVERS:
        for container in compose.containers(service):
            # Execute
            health: dict[str, Any] = compose.inspect(container)["State"]["Health"]

            # Assert: docker ran the image's grpc.health.v1 probe, and it said SERVING
            assert health["Status"] == "healthy", f"{service}: {health}"
            assert "is SERVING" in health["Log"][-1]["Output"], f"{service}: {health['Log'][-1]}"


def test_the_coordinator_sees_both_shards_and_every_worker(compose: ComposeProject) -> None:
    # Execute
    with Client(compose.address) as client:
        wait_for(
            lambda: (
                sum(w.alive for w in client.status().workers) >= 3
                and sum(s.live for s in client.status().registry) >= 2
            ),
            60,
            what="3 workers and 2 shards registered and alive",
            poll=0.5,
            tolerate=UNREACHABLE,
        )
        status = client.status()

    # Assert: each shard replica registered under its container's name, at that name
    names = [f"{compose.name}-ps-{i}" for i in (1, 2)]
    assert sorted((s.shard_id, s.address) for s in status.registry) == [
        (name, f"{name}:50061") for name in names
    ]
    assert sorted((s.address, s.healthy) for s in status.shards) == [
        (f"{name}:50061", True) for name in names
    ]
    assert len(compose.containers("worker")) == 3
    # A worker's host name is its container id: the coordinator knows the real containers.
    hosts = {w.host for w in status.workers if w.alive}
    assert hosts == {c[:12] for c in compose.containers("worker")}


def test_only_the_coordinator_is_published_and_only_on_loopback(compose: ComposeProject) -> None:
    # Execute
    published: dict[str, Any] = {}
    for service in (*SERVERS, "worker"):
        for container in compose.containers(service):
            ports: dict[str, Any] = compose.inspect(container)["NetworkSettings"]["Ports"]
            published[service] = {k: v for k, v in ports.items() if v}

    # Assert
    assert published == {
        "ps": {},
        "coordinator": {
            "50051/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(compose.publish_port)}]
        },
        "worker": {},
    }


def test_only_the_coordinator_leaves_the_internal_cluster_network(
    compose: ComposeProject,
) -> None:
    # Prepare
    def network(name: str) -> dict[str, Any]:
        out = run_docker(["network", "inspect", f"{compose.name}_{name}"], timeout=60)
        info: dict[str, Any] = json.loads(out)[0]
        return info

    cluster, edge = network("cluster"), network("edge")
    [coordinator] = compose.containers("coordinator")
    coordinator_on_edge = edge["Containers"][coordinator]["IPv4Address"].split("/")[0]
    code = CONNECT.format(host=coordinator_on_edge, port=50051)

    # Execute
    attached = {
        service: {
            frozenset(compose.inspect(c)["NetworkSettings"]["Networks"])
            for c in compose.containers(service)
        }
        for service in (*SERVERS, "worker")
    }
    from_coordinator = compose.exec_python("coordinator", code).strip()
    from_worker = compose.exec_python("worker", code).strip()
    from_shard = compose.exec_python("ps", code).strip()

    # Assert: docker gives the cluster network no way out (no NAT, no forwarding beyond it);
    # the coordinator alone also sits on `edge`, where its published port lives, and what runs
    # in a worker or a shard cannot reach that side.
    assert cluster["Internal"] is True
    assert edge["Internal"] is False
    inside = frozenset({f"{compose.name}_cluster"})
    assert attached == {
        "ps": {inside},
        "coordinator": {inside | {f"{compose.name}_edge"}},
        "worker": {inside},
    }
    assert from_coordinator == "connected"
    assert from_worker.startswith("failed"), from_worker
    assert from_shard.startswith("failed"), from_shard
