"""Fixtures for the security tests: certificates written by `pscluster certs`' own code, a
fresh random admin token per session (never a token in the repo), and real shards and
coordinators in this process, on free ports, with authentication and TLS as the test asks."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import torch

from pscluster.client.cli_certs import CertPaths, write_certs
from pscluster.config import Settings
from pscluster.coordinator.main import CoordinatorHandle
from pscluster.coordinator.main import serve as serve_coordinator
from pscluster.server.main import serve as serve_shard
from pscluster.transport.channel import open_channel
from pscluster.transport.server import RunningServer
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.support import tiny_job

RPC_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def admin_token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return write_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session", autouse=True)
def _torch_optim_imported() -> None:
    """A shard's first optimizer imports torch's compiler stack (seconds); pay it once here."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def tiny_chunks(name: str = "tiny") -> Iterator[co_pb2.SubmitJobChunk]:
    """A SubmitJob stream for a 15-parameter model, built as the SDK builds one."""
    return tiny_job(model="Plain", name=name, epochs=1, partitions=2, seed=0).chunks()


@dataclass
class Cluster:
    """A shard and a coordinator in this process, and the settings they serve with."""

    settings: Settings
    shard: RunningServer
    coordinator: CoordinatorHandle
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    @property
    def shard_address(self) -> str:
        return f"127.0.0.1:{self.shard.port}"

    def channel(self, address: str, **caller: object) -> grpc.Channel:
        """A channel as a caller with these settings fields (token, TLS files) opens one."""
        channel = open_channel(address, Settings(**caller))  # type: ignore[arg-type]
        self.channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.coordinator.stop(0)
        self.shard.stop(0)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start a shard and a coordinator with these settings fields (stopped at teardown)."""
    started: list[Cluster] = []

    def make(**fields: object) -> Cluster:
        base: dict[str, object] = {
            "host": "127.0.0.1",
            "grace_seconds": 0.0,
            "state_dir": tmp_path / f"state-{len(started)}",
            "rpc_timeout_seconds": RPC_TIMEOUT,
            "stall_seconds": 60.0,
            **fields,
        }
        shard = serve_shard(Settings(**base), port=0)  # type: ignore[arg-type]
        try:
            settings = Settings(**{**base, "shards": f"127.0.0.1:{shard.port}"})  # type: ignore[arg-type]
            coordinator = serve_coordinator(settings, port=0)
        except BaseException:
            shard.stop(0)
            raise
        cluster = Cluster(settings, shard, coordinator)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.close()
