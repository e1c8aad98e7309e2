"""Every call the coordinator makes to a parameter-server shard, each with a deadline.

One channel per shard address, opened on first use and kept. Calls that go to every shard of
a job (SetMembers, GetJobStats, DropJob, health) are issued as futures and then collected, so
a job on eight shards waits for the slowest shard, not for the sum of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.config import Settings
from pscluster.coordinator.store import ShardSlice
from pscluster.errors import Unavailable
from pscluster.transport import wire
from pscluster.transport.channel import open_channel
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

# Status calls (stats, health) feed monitoring: answer fast rather than hang a status line.
STATUS_TIMEOUT_SECONDS = 3.0
# Small control calls (SetMembers, DropJob) sit on a worker's AcquireTask or a client's
# CancelJob: a shard that cannot answer them in this time is treated as unreachable.
CONTROL_TIMEOUT_SECONDS = 5.0
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class ShardRead:
    values: torch.Tensor  # float32, the shard's range of the parameters
    buffers: torch.Tensor  # float64, the shard's range of the buffers
    version: int


@dataclass(frozen=True)
class LiveState:
    """A job's parameters and buffers as its shards hold them now."""

    flat: torch.Tensor
    buffers: torch.Tensor
    versions: tuple[int, ...]  # each shard's, in plan order


class ShardError(Unavailable):
    """A shard call failed; ``code`` is what the shard (or the channel) answered."""

    def __init__(self, address: str, status: grpc.StatusCode, details: str) -> None:
        self.address = address
        self.status = status
        self.details = details
        if status in _UNREACHABLE:
            text = f"shard {address} unreachable: {details or status.name}"
        else:
            text = f"shard {address} answered {status.name}: {details}"
        super().__init__(text)

    @property
    def unreachable(self) -> bool:
        return self.status in _UNREACHABLE


def _error(address: str, e: grpc.RpcError) -> ShardError:
    if isinstance(e, grpc.Call):
        return ShardError(address, e.code(), e.details() or "")
    return ShardError(address, grpc.StatusCode.UNKNOWN, str(e))


class ShardClients:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.rpc_timeout_seconds
        self.status_timeout = min(STATUS_TIMEOUT_SECONDS, settings.rpc_timeout_seconds)
        self.control_timeout = min(CONTROL_TIMEOUT_SECONDS, settings.rpc_timeout_seconds)
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = open_channel(address, self.settings)
            return self._channels[address]

    def stub(self, address: str) -> ps_grpc.ParameterServerStub:
        return ps_grpc.ParameterServerStub(self.channel(address))

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def init_job(self, address: str, config: ps_pb2.ShardJobConfig, values: torch.Tensor) -> bool:
        """Create the job's slice on a shard; False if the shard already had it (a retried
        init whose earlier attempt reached this shard)."""
        buffer = wire.encode(values)

        def stream() -> Iterator[ps_pb2.InitJobChunk]:
            yield ps_pb2.InitJobChunk(config=config)
            for data in wire.chunks(buffer, self.settings.chunk_bytes):
                yield ps_pb2.InitJobChunk(data=data)

        try:
            self.stub(address).InitJob(stream(), timeout=self.timeout)
        except grpc.RpcError as e:
            err = _error(address, e)
            if err.status == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise err from None
        return True

    def set_members(
        self,
        addresses: Sequence[str],
        job_id: str,
        members: Sequence[str],
        generation: int,
        excluded: Sequence[str] = (),
    ) -> None:
        request = ps_pb2.SetMembersRequest(
            job_id=job_id,
            worker_ids=list(members),
            generation=generation,
            excluded_worker_ids=list(excluded),
        )
        calls = [
            (a, self.stub(a).SetMembers.future(request, timeout=self.control_timeout))
            for a in addresses
        ]
        errors = [e for e in (_failure(a, f) for a, f in calls) if e is not None]
        if errors:
            raise errors[0]

    def job_stats(
        self, addresses: Sequence[str], job_id: str
    ) -> list[common_pb2.ShardJobStats | ShardError]:
        """Each shard's stats, or the error it answered, in the order of ``addresses``."""
        request = ps_pb2.JobStatsRequest(job_id=job_id)
        calls = [
            (a, self.stub(a).GetJobStats.future(request, timeout=self.status_timeout))
            for a in addresses
        ]
        results: list[common_pb2.ShardJobStats | ShardError] = []
        for a, f in calls:
            err = _failure(a, f)
            results.append(f.result() if err is None else err)
        return results

    def drop_job(self, addresses: Sequence[str], job_id: str) -> list[ShardError]:
        """Free the job everywhere; a shard that never had it is fine. Returns what failed."""
        request = ps_pb2.DropJobRequest(job_id=job_id)
        calls = [
            (a, self.stub(a).DropJob.future(request, timeout=self.control_timeout))
            for a in addresses
        ]
        errors = []
        for a, f in calls:
            err = _failure(a, f)
            if err is not None and err.status != grpc.StatusCode.NOT_FOUND:
                errors.append(err)
        return errors

    def pull(self, job_id: str, part: ShardSlice) -> ShardRead:
        """An observer's read of one shard's slice (never waits on barriers or clocks)."""
        request = ps_pb2.PullRequest(
            job_id=job_id,
            worker_id="",
            dtype=common_pb2.DTYPE_FLOAT32,
            chunk_bytes=0,  # the shard's own size, which fits its message limit
        )
        try:
            stream = iter(self.stub(part.address).Pull(request, timeout=self.timeout))
            first = next(stream, None)
            if first is None or first.WhichOneof("part") != "header":
                raise ShardError(part.address, grpc.StatusCode.INTERNAL, "pull sent no header")
            header = first.header
            if (header.start, header.length) != (part.start, part.length):
                raise ShardError(
                    part.address,
                    grpc.StatusCode.INTERNAL,
                    f"pull returned range {header.start}+{header.length}, "
                    f"expected {part.start}+{part.length}",
                )
            received = bytearray(header.length * wire.itemsize(header.dtype))
            wire.fill(received, (msg.data for msg in stream))
            values = wire.decode(received, header.dtype, header.length)
            buffers = wire.decode_float64(header.buffers)
            return ShardRead(values, buffers, header.version)
        except grpc.RpcError as e:
            raise _error(part.address, e) from None

    def pull_all(
        self, job_id: str, parts: Sequence[ShardSlice], size: int, buffer_size: int
    ) -> LiveState:
        """The job's whole flat vector and buffers, assembled from its shards' ranges, with
        the version each shard was at."""
        flat = torch.empty(size, dtype=torch.float32)
        buffers = torch.empty(buffer_size, dtype=torch.float64)
        versions = []
        offset = 0
        for part in parts:
            read = self.pull(job_id, part)
            flat[part.start : part.start + part.length] = read.values
            buffers[offset : offset + read.buffers.numel()] = read.buffers
            offset += read.buffers.numel()
            versions.append(read.version)
        if offset != buffer_size:
            raise ShardError(
                parts[0].address if parts else "",
                grpc.StatusCode.INTERNAL,
                f"the shards hold {offset} buffer values, the job has {buffer_size}",
            )
        return LiveState(flat, buffers, tuple(versions))

    def health(self, addresses: Sequence[str]) -> list[ShardError | None]:
        """The standard gRPC health check of each shard: None if SERVING, else the problem."""
        request = health_pb2.HealthCheckRequest(service="")
        calls = [
            (
                a,
                health_pb2_grpc.HealthStub(self.channel(a)).Check.future(
                    request, timeout=self.status_timeout
                ),
            )
            for a in addresses
        ]
        out: list[ShardError | None] = []
        for a, f in calls:
            err = _failure(a, f)
            if err is not None:
                out.append(err)
            elif f.result().status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(f.result().status)
                out.append(ShardError(a, grpc.StatusCode.UNAVAILABLE, f"health is {status}"))
            else:
                out.append(None)
        return out


def _failure(address: str, future: grpc.Future[Any]) -> ShardError | None:
    """Wait for a call; None if it succeeded (its result is then ``future.result()``)."""
    try:
        future.result()
    except grpc.RpcError as e:
        return _error(address, e)
    return None
