"""Forward while the pull is still arriving, against a real shard whose pull trickles in: the
first layer computes before the last bytes are in, every layer waits for its own, and the
output is exactly forward's after a whole pull. A pull that fails is reported, not hidden."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import torch
from torch import nn

from pscluster.config import Settings
from pscluster.model.layout import ParamLayout
from pscluster.server.servicer import SERVICE_NAME, ParameterServerServicer, add_to_server
from pscluster.server.shard import Shard
from pscluster.shard_client import JobShards, ShardClient, ShardRange, Snapshot
from pscluster.transport.server import RunningServer, build_server
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.pull_ahead import PullAhead, PullAheadFailed, PullGate

CHUNK = 1024
PAUSE = 0.05  # seconds after each data chunk of a pull


class Trickle(ParameterServerServicer):
    """A shard whose pulls send a chunk every PAUSE seconds (a slow link)."""

    def Pull(
        self, request: ps_pb2.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.PullChunk | bytes]:
        for message in super().Pull(request, context):
            yield message
            time.sleep(PAUSE)


@pytest.fixture
def shard() -> Iterator[str]:
    settings = Settings(host="127.0.0.1", grace_seconds=0.0, chunk_bytes=CHUNK)
    servicer = Trickle(Shard(), settings)
    running: RunningServer = build_server(
        settings, 0, [lambda server: add_to_server(servicer, server)], [SERVICE_NAME]
    )
    yield f"127.0.0.1:{running.port}"
    running.stop(0)


@pytest.fixture
def client() -> Iterator[ShardClient]:
    shards = ShardClient(Settings(chunk_bytes=CHUNK))
    yield shards
    shards.close()


def net() -> nn.Sequential:
    layers = [nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)]
    return nn.Sequential(*layers)


def job_with(client: ShardClient, shard: str, values: torch.Tensor) -> JobShards:
    config = ps_pb2.ShardJobConfig(
        job_id="j",
        start=0,
        length=values.numel(),
        mode="async",
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.1),
    )
    client.init_job([(shard, config, values)])
    client.set_members([shard], "j", ["w"], generation=1)
    return JobShards(client, "j", [ShardRange(shard, 0, values.numel())])


def test_forward_starts_before_the_pull_ends_and_computes_what_a_whole_pull_gives(
    shard: str, client: ShardClient
) -> None:
    # Prepare: the shard holds other parameters than the model has now; the model's
    # parameters are views of one vector the pull is received into
    torch.manual_seed(0)
    model, layout = net(), ParamLayout.of_module(net())
    on_shard = torch.randn(layout.size)
    job = job_with(client, shard, on_shard)
    bound = layout.bind(model)
    assert bound is not None
    gate = PullGate(model, layout, [(0, layout.size)])
    x = torch.randn(4, 8)
    first_layer_ran_at: list[float] = []
    model[0].register_forward_hook(lambda *_: first_layer_ran_at.append(time.perf_counter()))

    # Execute: forward beside the pull
    ahead = PullAhead([layout.size])

    def pull(progress: object) -> Snapshot:
        into = (bound, torch.empty(0, dtype=torch.float64))
        return job.pull("w", None, 30.0, into=into, progress=progress)  # type: ignore[arg-type]

    ahead.start(pull)
    with torch.no_grad(), gate.watching(ahead, lambda: None):
        out = model(x)
    ahead.snapshot()
    pulled_at = time.perf_counter()

    # Assert: the first layer (its 576 values come first) ran well before the pull ended
    # (the last layers' bytes were still trickling in), and the output is the model's on
    # the shard's values
    chunks = layout.size * 4 // CHUNK
    assert pulled_at - first_layer_ran_at[0] > PAUSE * chunks / 2
    assert ahead.gated_seconds > 0
    whole = net()
    layout.load_into(whole, on_shard)
    assert torch.equal(bound, on_shard)
    assert torch.equal(out, whole(x))


def test_a_pull_that_fails_ends_the_waits_and_says_so(shard: str, client: ShardClient) -> None:
    # Prepare: a pull of a job the shard does not have
    model, layout = net(), ParamLayout.of_module(net())
    gate = PullGate(model, layout, [(0, layout.size)])
    job = JobShards(client, "nosuch", [ShardRange(shard, 0, layout.size)])
    ahead = PullAhead([layout.size]).start(
        lambda progress: job.pull("w", None, 30.0, progress=progress)
    )

    # Execute: forward does not hang on parameters that will never come
    with torch.no_grad(), gate.watching(ahead, lambda: None):
        model(torch.randn(2, 8))

    # Assert
    with pytest.raises(PullAheadFailed, match="nosuch"):
        ahead.snapshot()
