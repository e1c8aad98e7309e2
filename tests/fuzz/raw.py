"""Raw gRPC calls for the fuzz tests: bytes in, bytes out, so that a test can send anything, and
how a call must end (OK, or a precise refusal)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from hypothesis import event
from hypothesis.control import currently_in_test_context

from tests.support import Rpc

RPC_TIMEOUT = 10.0
PS = "/pscluster.v1.ParameterServer/"
CO = "/pscluster.v1.Coordinator/"

# Codes a refused call may end with. Never UNKNOWN or INTERNAL (a bug on the server) nor
# UNAVAILABLE (the server fell over). CANCELLED only where the client cancelled.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its code and details, and the reply bytes (or messages) if OK."""

    code: grpc.StatusCode
    details: str
    replies: list[bytes]


class Raw:
    """Calls by method name with bytes in and bytes out, so a test can send anything.

    The channel has no message limits of its own: an oversized message must be refused by the
    server, not by the client.
    """

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT)

    def close(self) -> None:
        self.channel.close()

    def call(self, rpc: Rpc, messages: list[bytes]) -> Outcome:
        """``messages`` as ``rpc`` takes them: the first (or nothing) for a unary request."""
        first = messages[0] if messages else b""
        if rpc.client_streaming and rpc.server_streaming:
            return self.bidi_stream(rpc.path, messages)
        if rpc.client_streaming:
            return self.client_stream(rpc.path, messages)
        if rpc.server_streaming:
            return self.server_stream(rpc.path, first)
        return self.unary(rpc.path, first)

    def unary(self, method: str, request: bytes, timeout: float = RPC_TIMEOUT) -> Outcome:
        call = self.channel.unary_unary(method, None, None)
        try:
            reply = call(request, timeout=timeout)
        except grpc.RpcError as e:
            return _failed(e)
        return Outcome(grpc.StatusCode.OK, "", [reply])

    def server_stream(self, method: str, request: bytes, timeout: float = RPC_TIMEOUT) -> Outcome:
        return self._read(self.channel.unary_stream(method, None, None)(request, timeout=timeout))

    def bidi_stream(
        self, method: str, requests: Iterable[bytes], timeout: float = RPC_TIMEOUT
    ) -> Outcome:
        call = self.channel.stream_stream(method, None, None)
        return self._read(call(iter(requests), timeout=timeout))

    def client_stream(
        self, method: str, requests: Iterable[bytes], timeout: float = RPC_TIMEOUT
    ) -> Outcome:
        call = self.channel.stream_unary(method, None, None)
        try:
            reply = call(iter(requests), timeout=timeout)
        except grpc.RpcError as e:
            return _failed(e)
        return Outcome(grpc.StatusCode.OK, "", [reply])

    def cancelled_stream(self, method: str, requests: list[bytes]) -> Outcome:
        """Send ``requests``, then cancel the call with the stream still open (a client that
        dies mid-upload). The server must treat it as never sent."""
        sent = threading.Event()
        release = threading.Event()

        def stream() -> Iterator[bytes]:
            yield from requests
            sent.set()
            release.wait(RPC_TIMEOUT)

        future = self.channel.stream_unary(method, None, None).future(stream(), timeout=RPC_TIMEOUT)
        sent.wait(RPC_TIMEOUT)
        # Let the messages reach the server before the cancel does: nothing tells a client
        # what the server has read, and a cancel overtaking them would test an empty stream.
        time.sleep(0.02)
        future.cancel()  # type: ignore[no-untyped-call]
        release.set()
        try:
            future.result(timeout=RPC_TIMEOUT)
        except grpc.FutureCancelledError:
            return Outcome(grpc.StatusCode.CANCELLED, "cancelled by the client", [])
        except grpc.RpcError as e:
            return _failed(e)
        return Outcome(grpc.StatusCode.OK, "", [])

    @staticmethod
    def _read(replies: Iterable[bytes]) -> Outcome:
        got: list[bytes] = []
        try:
            for reply in replies:
                got.append(reply)
        except grpc.RpcError as e:
            return _failed(e, got)
        return Outcome(grpc.StatusCode.OK, "", got)


def _failed(e: grpc.RpcError, replies: list[bytes] | None = None) -> Outcome:
    assert isinstance(e, grpc.Call)
    return Outcome(e.code(), e.details() or "", replies or [])


def send(raw: Raw, rpc: Rpc, messages: list[bytes]) -> Outcome:
    """One call, its ending counted: --hypothesis-show-statistics shows how the examples
    ended, and a fuzz test whose calls all fail the same early check fuzzes little."""
    outcome = raw.call(rpc, messages)
    if currently_in_test_context():
        event(f"{rpc.name}: {outcome.code.name} {outcome.details[:40]}")
    return outcome


def serving(raw: Raw) -> bool:
    request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    outcome = raw.unary("/grpc.health.v1.Health/Check", request)
    if outcome.code != grpc.StatusCode.OK:
        return False
    status = health_pb2.HealthCheckResponse.FromString(outcome.replies[0]).status
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def assert_precise(outcome: Outcome, allowed: Iterable[grpc.StatusCode], what: str) -> None:
    """The call succeeded or was refused with one of ``allowed`` and a message saying why."""
    codes = {grpc.StatusCode.OK, *allowed}
    assert outcome.code in codes, f"{what}: {outcome.code.name} {outcome.details!r}"
    if outcome.code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
        assert outcome.details.strip(), f"{what}: {outcome.code.name} without a message"
