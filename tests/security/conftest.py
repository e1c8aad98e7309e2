"""Fixtures for the security tests: certificates written by `pscluster certs`' own code, a
fresh random admin token per session (never a token in the repo), and real shards and
coordinators in this process, on free ports, with authentication and TLS as the test asks."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from pscluster.client.cli_certs import CertPaths, write_certs
from pscluster.config import Settings
from pscluster.coordinator.main import CoordinatorHandle
from pscluster.coordinator.main import serve as serve_coordinator
from pscluster.data.dataset import Dataset
from pscluster.model import source, state
from pscluster.model.layout import ParamLayout
from pscluster.server.main import serve as serve_shard
from pscluster.transport.channel import open_channel
from pscluster.transport.server import RunningServer
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

RPC_TIMEOUT = 30.0

MODEL_SOURCE = """
from torch import nn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""


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


def tiny_chunks(name: str = "tiny") -> list[co_pb2.SubmitJobChunk]:
    """A SubmitJob stream for a 15-parameter model, built as the SDK builds one."""
    torch.manual_seed(0)
    model = source.build(MODEL_SOURCE, "Tiny", "{}")
    layout = ParamLayout.of_module(model)
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(24, 4)).astype(np.float32), rng.integers(0, 3, 24))
    test = (rng.normal(size=(9, 4)).astype(np.float32), rng.integers(0, 3, 9))
    spec = co_pb2.JobSpec(
        name=name,
        model=co_pb2.ModelSpec(
            source=MODEL_SOURCE,
            class_name="Tiny",
            kwargs_json=json.dumps({}),
            params=[co_pb2.ParamInfo(name=s.name, shape=s.shape) for s in layout.slots],
        ),
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1),
        epochs=1,
        batch_size=4,
        partitions=2,
        loss="cross_entropy",
    )
    blobs = {
        "dataset": Dataset.from_arrays(train, test).to_blob(),
        "initial_state": state.dumps(model.state_dict()),
    }
    chunks = [co_pb2.SubmitJobChunk(spec=spec)]
    for blob, data in blobs.items():
        chunks.append(co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=blob, data=data)))
    return chunks


def rpc_failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call fails with; the test fails if it succeeds."""
    try:
        result = call()
        if isinstance(result, Iterator):  # a streamed reply fails when it is read
            list(result)
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return e.code(), e.details() or ""
    raise AssertionError("the call succeeded; expected an error status")


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
