"""Gradients pushed bucket by bucket during backward, to real shards on free ports: the update
the shards apply is bit-for-bit the one an ordinary push after backward applies, the last
layers' buckets are on the wire before backward reaches the first layer, and an abandoned
batch (a non-finite gradient) changes nothing on any shard."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import cast

import pytest
import torch
from torch import nn

from pscluster.config import Settings
from pscluster.model.layout import ParamLayout
from pscluster.server.main import ShardServer, serve
from pscluster.shard_client import JobShards, PushExtras, ShardClient, ShardRange
from pscluster.shard_client.client import push_header
from pscluster.shard_client.job import start_streamed_push
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.overlap import GradientStream

BUCKET = 2048  # bytes: each layer of the net below spans several buckets
CHUNK = 1024
TIMEOUT = 10.0


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)
    )


@pytest.fixture
def shards() -> Iterator[list[str]]:
    settings = Settings(host="127.0.0.1", grace_seconds=0.0, chunk_bytes=CHUNK)
    running: list[ShardServer] = [serve(settings, port=0) for _ in range(2)]
    yield [f"127.0.0.1:{s.port}" for s in running]
    for s in running:
        s.stop(0)


@pytest.fixture
def client() -> Iterator[ShardClient]:
    shards = ShardClient(Settings(chunk_bytes=CHUNK))
    yield shards
    shards.close()


def new_job(
    client: ShardClient, addresses: list[str], job_id: str, values: torch.Tensor
) -> JobShards:
    """The flat vector split over the two shards, async SGD lr 0.5, member "w"."""
    half = values.numel() // 2 + 3  # not a bucket boundary
    ranges = [
        ShardRange(addresses[0], 0, half),
        ShardRange(addresses[1], half, values.numel() - half),
    ]
    client.init_job(
        [
            (
                r.address,
                ps_pb2.ShardJobConfig(
                    job_id=job_id,
                    start=r.start,
                    length=r.length,
                    mode="async",
                    optimizer=common_pb2.OptimizerConfig(name="sgd", lr=0.5),
                ),
                values[r.start : r.start + r.length],
            )
            for r in ranges
        ]
    )
    for r in ranges:
        client.set_members([r.address], job_id, ["w"], generation=1)
    return JobShards(client, job_id, ranges)


def streamed(job: JobShards, stream: GradientStream, loss: torch.Tensor) -> list[ps_pb2.PushReply]:
    base = job.pull("w", None, timeout=TIMEOUT)

    def header(i: int) -> ps_pb2.PushHeader:
        h = push_header(job.job_id, "w", 1, base, i, job.ranges[i], 8, PushExtras())
        h.bucket_bytes = stream.bucket_bytes()
        return h

    stream.arm()
    pushes = start_streamed_push(job, header, lambda i: stream.chunks(i, CHUNK), TIMEOUT)
    loss.backward()  # type: ignore[no-untyped-call]
    stream.finish()
    stream.seal()
    replies = pushes.results()
    assert all(isinstance(r, ps_pb2.PushReply) for r in replies.values()), replies
    return [r for r in replies.values() if isinstance(r, ps_pb2.PushReply)]


def batch_loss(model: nn.Module) -> torch.Tensor:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    out: torch.Tensor = model(x)
    return out.pow(2).mean()


def test_a_streamed_push_applies_exactly_what_a_push_after_backward_applies(
    shards: list[str], client: ShardClient
) -> None:
    # Prepare: one model, its layout, two identical jobs over the same two shards
    model = net()
    layout = ParamLayout.of_module(model)
    values = layout.flatten(dict(model.named_parameters()))
    plain, overlapped = (
        new_job(client, shards, "plain", values),
        new_job(client, shards, "over", values),
    )
    ranges = [(r.start, r.length) for r in overlapped.ranges]
    stream = GradientStream(model, layout, ranges, BUCKET)

    # Execute: the same batch's gradient, pushed after backward to one job and bucket by
    # bucket during backward to the other
    batch_loss(model).backward()  # type: ignore[no-untyped-call]
    grad = layout.gradient(model)
    base = plain.pull("w", None, timeout=TIMEOUT)
    payloads = {
        i: wire.encode(grad[r.start : r.start + r.length]) for i, r in enumerate(plain.ranges)
    }
    after = plain.push("w", 1, payloads, "none", base, batch_size=8, timeout=TIMEOUT)
    model.zero_grad(set_to_none=True)
    replies = streamed(overlapped, stream, batch_loss(model))

    # Assert: both applied, the same parameters to the bit
    assert all(r.outcome == ps_pb2.PUSH_OUTCOME_APPLIED for r in after.values())  # type: ignore[union-attr]
    assert [r.outcome for r in replies] == [ps_pb2.PUSH_OUTCOME_APPLIED] * 2
    assert torch.equal(stream.flat, grad)
    want = plain.pull("", None, timeout=TIMEOUT).values
    got = overlapped.pull("", None, timeout=TIMEOUT).values
    assert torch.equal(got, want)
    assert not torch.equal(got, values)


def test_the_last_layers_are_on_the_wire_before_backward_reaches_the_first(
    shards: list[str], client: ShardClient
) -> None:
    # Prepare: backward of the first layer waits until the second shard (the last layers)
    # has sent data: a push that left only after backward would never let it go on
    model = net()
    layout = ParamLayout.of_module(model)
    job = new_job(client, shards, "early", layout.flatten(dict(model.named_parameters())))
    stream = GradientStream(model, layout, [(r.start, r.length) for r in job.ranges], BUCKET)
    sent = threading.Event()
    original = stream.chunks

    def watched(shard: int, chunk_bytes: int) -> Iterator[bytes]:
        for chunk in original(shard, chunk_bytes):
            if shard == 1:
                sent.set()
            yield chunk

    stream.chunks = watched  # type: ignore[method-assign]
    waited: list[bool] = []
    first = cast(nn.Linear, model[0]).weight

    def hold(grad: torch.Tensor) -> None:
        waited.append(sent.wait(TIMEOUT))

    first.register_hook(hold)  # type: ignore[no-untyped-call]

    # Execute
    replies = streamed(job, stream, batch_loss(model))

    # Assert
    assert waited == [True], "the first layer's gradient came before any byte was sent"
    assert [r.outcome for r in replies] == [ps_pb2.PUSH_OUTCOME_APPLIED] * 2


def test_an_abandoned_batch_changes_nothing_on_any_shard(
    shards: list[str], client: ShardClient
) -> None:
    # Prepare: a batch whose gradient is NaN in the first layer
    model = net()
    layout = ParamLayout.of_module(model)
    values = layout.flatten(dict(model.named_parameters()))
    job = new_job(client, shards, "nan", values)
    stream = GradientStream(model, layout, [(r.start, r.length) for r in job.ranges], BUCKET)
    base = job.pull("w", None, timeout=TIMEOUT)
    cast(nn.Linear, model[0]).weight.register_hook(lambda g: g * float("nan"))  # type: ignore[no-untyped-call]

    # Execute: as the worker does when the gradient is not finite
    stream.arm()

    def header(i: int) -> ps_pb2.PushHeader:
        h = push_header("nan", "w", 1, base, i, job.ranges[i], 8, PushExtras())
        h.bucket_bytes = BUCKET
        return h

    pushes = start_streamed_push(job, header, lambda i: stream.chunks(i, CHUNK), TIMEOUT)
    batch_loss(model).backward()  # type: ignore[no-untyped-call]
    assert not bool(torch.isfinite(stream.finish()).all())
    stream.abort()
    pushes.cancel()
    results = pushes.results()

    # Assert: every call was broken off, no shard applied or even refused a whole push
    assert all(not isinstance(r, ps_pb2.PushReply) for r in results.values()), results
    assert torch.equal(job.pull("", None, timeout=TIMEOUT).values, values)
    stats = client.job_stats([r.address for r in job.ranges], "nan")
    assert [s.pushes_applied for s in stats] == [0, 0]  # type: ignore[union-attr]
    assert all("nonfinite" not in s.pushes_rejected for s in stats)  # type: ignore[union-attr]


class Partly(nn.Module):
    """A layer forward never uses and a frozen one: their hooks never run."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(16, 4)
        self.unused = nn.Linear(16, 300)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.frozen(self.used(x))
        return out


def test_parameters_without_a_gradient_are_sent_as_zeros_and_the_push_completes(
    shards: list[str], client: ShardClient
) -> None:
    # Prepare
    torch.manual_seed(0)
    model = Partly()
    layout = ParamLayout.of_module(model)
    values = layout.flatten(dict(model.named_parameters()))
    job = new_job(client, shards, "partly", values)
    stream = GradientStream(model, layout, [(r.start, r.length) for r in job.ranges], BUCKET)

    # Execute
    replies = streamed(job, stream, batch_loss(model))

    # Assert: what a push after backward would send (zeros where no gradient), applied
    assert [r.outcome for r in replies] == [ps_pb2.PUSH_OUTCOME_APPLIED] * 2
    assert torch.equal(stream.flat, layout.gradient(model))
    unused = layout.slots[layout.names.index("unused.weight")]
    assert not stream.flat[unused.offset : unused.offset + unused.numel].any()
