"""The coordinator's calls for a live re-layout (ScaleShards), one shard at a time.

HoldJob holds a job's pulls on a shard (and releases them, or tells the shard the job moved),
ExportJob reads the held job's whole state, AdoptJob installs a state cut for a shard. The state
travels as a checkpoint image: :func:`state_from_bytes` and :func:`state_to_bytes` (whose home
is :mod:`pscluster.server.durability.checkpoint`) turn it into tensors and JSON and back, for
the coordinator to recut. Every failure is a :class:`~pscluster.shard_client.errors.ShardError`
naming the shard, raised.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import grpc

from pscluster.config import Settings
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.shard_client.errors import shard_error
from pscluster.shard_client.streams import Streams
from pscluster.transport import framing
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

__all__ = ["RelayoutCalls", "state_from_bytes", "state_to_bytes"]


class _Client(Protocol):
    """What the calls need of :class:`~pscluster.shard_client.ShardClient`."""

    settings: Settings
    timeout: float
    control_timeout: float

    def stub(self, address: str) -> ps_grpc.ParameterServerStub: ...

    def streams(self, address: str) -> Streams: ...


class RelayoutCalls:
    """Mixed into :class:`~pscluster.shard_client.ShardClient`."""

    def hold_job(
        self: _Client,
        address: str,
        job_id: str,
        action: ps_pb2.HoldAction.ValueType,
        layout_generation: int = 0,
    ) -> ps_pb2.HoldJobReply:
        """HOLD (poll it until every member is in ``waiting``), RELEASE, or MOVED to
        ``layout_generation``. HOLD and RELEASE check a nonzero ``layout_generation``
        against the job's here, as a pull does (LayoutMovedError if it is older)."""
        request = ps_pb2.HoldJobRequest(
            job_id=job_id, action=action, layout_generation=layout_generation
        )
        try:
            reply: ps_pb2.HoldJobReply = self.stub(address).HoldJob(
                request, timeout=self.control_timeout
            )
        except grpc.RpcError as e:
            raise shard_error(address, e) from None
        return reply

    def export_job(self: _Client, address: str, job_id: str) -> bytes:
        """The held job's whole state on the shard at ``address`` (FAILED_PRECONDITION unless
        held): decode it with :func:`state_from_bytes`."""
        request = ps_pb2.ExportJobRequest(job_id=job_id)
        try:
            chunks = self.stub(address).ExportJob(request, timeout=self.timeout)
            return b"".join(chunk.data for chunk in chunks)
        except grpc.RpcError as e:
            raise shard_error(address, e) from None

    def adopt_job(
        self: _Client, address: str, job_id: str, layout_generation: int, state: bytes
    ) -> ps_pb2.AdoptJobReply:
        """Install ``state`` (:func:`state_to_bytes`; its config's layout generation must be
        ``layout_generation``) on the shard at ``address``, replacing an older generation of
        the job there; durable once this returns."""
        header = ps_pb2.AdoptJobHeader(
            job_id=job_id, layout_generation=layout_generation, state_bytes=len(state)
        )
        messages = itertools.chain(
            [ps_pb2.AdoptJobChunk(header=header)],
            framing.frames(memoryview(state), self.settings.chunk_bytes),
        )
        try:
            reply: ps_pb2.AdoptJobReply = self.streams(address).adopt(
                messages, timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise shard_error(address, e) from None
        return reply
