"""The worker's view of a job's shards: pull the whole vector, push the whole gradient.

Each shard holds one contiguous range; a pull or push talks to every shard in parallel, each
as a stream of chunks, and the ranges are stitched into (or cut from) one flat vector.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch

from pscluster.config import Settings
from pscluster.transport import framing, wire
from pscluster.transport.channel import open_channel
from pscluster.v1 import common_pb2, coordinator_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

PULL = "/pscluster.v1.ParameterServer/Pull"
PUSH = "/pscluster.v1.ParameterServer/Push"


@dataclass
class Snapshot:
    """Parameters as pulled, with each shard's version and clock (what a push refers to)."""

    values: torch.Tensor
    buffers: torch.Tensor  # float64, the whole buffer vector (empty when the model has none)
    versions: list[int]
    clocks: list[int]
    # The longest any shard held the pull for the consistency mode (the shards are pulled in
    # parallel, so this is what the worker spent waiting on other workers).
    waited_seconds: float = 0.0


class ShardSet:
    def __init__(
        self, job_id: str, ranges: Sequence[coordinator_pb2.ShardRange], settings: Settings
    ) -> None:
        self.job_id = job_id
        self.ranges = list(ranges)
        self.size = sum(r.length for r in self.ranges)
        self.buffer_size = sum(r.buffer_length for r in self.ranges)
        self.settings = settings
        self._channels = [open_channel(r.address, settings) for r in self.ranges]
        # Data chunks are framed and parsed by hand (pscluster.transport.framing): the same
        # bytes on the wire as the generated stubs, without protobuf's two copies of a tensor.
        self._pulls = [
            c.unary_stream(
                PULL,
                request_serializer=ps_pb2.PullRequest.SerializeToString,
                response_deserializer=framing.parser(ps_pb2.PullChunk.FromString),
            )
            for c in self._channels
        ]
        self._pushes = [
            c.stream_unary(
                PUSH,
                request_serializer=framing.serializer,
                response_deserializer=ps_pb2.PushReply.FromString,
            )
            for c in self._channels
        ]
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.ranges)))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for c in self._channels:
            c.close()

    def pull(
        self,
        worker_id: str,
        min_versions: Sequence[int] | None,
        timeout: float,
        dtype: int = common_pb2.DTYPE_FLOAT32,
    ) -> Snapshot:
        """Pull every range; blocks while a shard's consistency mode makes this worker wait.

        ``dtype`` is the wire dtype (a job's ``compression.pull_dtype``); values arrive as
        float32 whatever it is.
        """
        values = torch.empty(self.size, dtype=torch.float32)
        buffers = torch.zeros(self.buffer_size, dtype=torch.float64)
        mins = list(min_versions) if min_versions is not None else [0] * len(self.ranges)

        def one(i: int) -> tuple[int, int, float]:
            r = self.ranges[i]
            request = ps_pb2.PullRequest(
                job_id=self.job_id,
                worker_id=worker_id,
                min_version=mins[i],
                dtype=common_pb2.DType.ValueType(dtype),
            )
            stream = iter(self._pulls[i](request, timeout=timeout))
            first = next(stream, None)
            if isinstance(first, memoryview) or first is None or not first.HasField("header"):
                raise RuntimeError(f"shard {r.address} answered a pull without a header")
            header = first.header
            received = bytearray(header.length * wire.itemsize(header.dtype))
            wire.fill(received, (c if isinstance(c, memoryview) else c.data for c in stream))
            part = wire.decode(received, header.dtype, header.length)
            values[r.start : r.start + r.length] = part
            if r.buffer_length:
                buffers[r.buffer_start : r.buffer_start + r.buffer_length] = decode_buffers(
                    header.buffers, r.buffer_length, r.address
                )
            return header.version, header.clock, header.waited_seconds

        results = list(self._pool.map(one, range(len(self.ranges))))
        return Snapshot(
            values,
            buffers,
            [v for v, _, _ in results],
            [c for _, c, _ in results],
            max(w for _, _, w in results),
        )

    def push(
        self,
        worker_id: str,
        seq: int,
        payloads: Sequence[bytes | bytearray | memoryview],
        codec: str,
        base: Snapshot,
        batch_size: int,
        timeout: float,
        extras: PushExtras | None = None,
    ) -> list[ps_pb2.PushReply]:
        """Push each shard its payload (its slice of the gradient, encoded by ``codec``: see
        :class:`pscluster.worker.compressed.PushEncoder`) and its slice of the buffers'
        change; replies in shard order."""
        if len(payloads) != len(self.ranges):
            raise ValueError(f"{len(payloads)} payloads for {len(self.ranges)} shards")
        chunk_bytes = self.settings.chunk_bytes
        extras = extras or PushExtras()
        deltas = [self._buffer_delta(extras.buffer_delta, r) for r in self.ranges]

        def messages(i: int) -> Iterator[ps_pb2.PushChunk | bytes]:
            r = self.ranges[i]
            yield ps_pb2.PushChunk(
                header=ps_pb2.PushHeader(
                    job_id=self.job_id,
                    worker_id=worker_id,
                    seq=seq,
                    base_version=base.versions[i],
                    base_clock=base.clocks[i],
                    length=r.length,
                    dtype=common_pb2.DTYPE_FLOAT32,
                    batch_size=batch_size,
                    codec=codec,
                    payload_bytes=len(payloads[i]),
                    buffer_delta=deltas[i],
                    grad_scale=extras.grad_scale if extras.grad_scale != 1.0 else 0.0,
                )
            )
            yield from framing.frames(memoryview(payloads[i]), chunk_bytes)

        def one(i: int) -> ps_pb2.PushReply:
            reply: ps_pb2.PushReply = self._pushes[i](messages(i), timeout=timeout)
            return reply

        return list(self._pool.map(one, range(len(self.ranges))))

    @staticmethod
    def _buffer_delta(delta: torch.Tensor | None, r: coordinator_pb2.ShardRange) -> bytes:
        """A shard's slice of the buffers' change; nothing when it did not change (constant
        buffers cost no bytes per push)."""
        if delta is None or not r.buffer_length:
            return b""
        part = delta[r.buffer_start : r.buffer_start + r.buffer_length]
        if not bool(part.any()):
            return b""
        return part.numpy().astype("<f8", copy=False).tobytes()


@dataclass(frozen=True)
class PushExtras:
    """What goes with a push beside the gradient."""

    buffer_delta: torch.Tensor | None = None  # float64, the whole buffer vector's change
    grad_scale: float = 1.0  # fp16 loss scaling: the gradient was multiplied by this


def decode_buffers(data: bytes, length: int, address: str) -> torch.Tensor:
    if len(data) != length * 8:
        raise RuntimeError(
            f"shard {address} sent {len(data)} bytes of buffers, expected {length} float64"
        )
    return wire.decode_float64(data)


def is_retryable(error: grpc.RpcError) -> bool:
    """Codes after which the same call may succeed later (a barrier not yet met, a restart)."""
    code = error.code()  # type: ignore[attr-defined]
    return code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
