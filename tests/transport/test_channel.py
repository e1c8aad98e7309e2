"""Channels from open_channel keep their deadlines when the server dies mid-call.

grpcio 1.85 with a retry policy leaves a server-streaming call blocked past its deadline,
forever, once its server process is killed while the call waits (as a worker's pull waits at
a sync barrier). That hung every worker of a sync job whose shard was killed and restarted;
open_channel's service config leaves server-streaming methods out of its retry policy.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from pscluster.transport.channel import open_channel

DEADLINE = 2.0
# A server whose Pull waits (like a sync barrier) until its caller gives up.
HOLDING_SERVER = """
import sys, time
from concurrent import futures
import grpc

def pull(request, context):
    while context.is_active():
        time.sleep(0.05)
    yield b""

handler = grpc.method_handlers_generic_handler(
    "pscluster.v1.ParameterServer", {"Pull": grpc.unary_stream_rpc_method_handler(pull)}
)
server = grpc.server(futures.ThreadPoolExecutor(16))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""


class HoldingServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDING_SERVER, str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def holding_server() -> Iterator[HoldingServer]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = HoldingServer(port)
    server.start()
    yield server
    server.kill()


def test_pulls_waiting_on_a_killed_server_end_by_their_deadline(
    holding_server: HoldingServer,
) -> None:
    # Prepare: four callers pulling in a loop, each pull held by the server until its deadline
    channel = open_channel(f"127.0.0.1:{holding_server.port}")
    pull = channel.unary_stream(
        "/pscluster.v1.ParameterServer/Pull", request_serializer=None, response_deserializer=None
    )
    stop = threading.Event()
    codes: dict[grpc.StatusCode, int] = {}
    longest = [0.0]

    def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                list(pull(b"", timeout=DEADLINE))
            except grpc.RpcError as e:
                codes[e.code()] = codes.get(e.code(), 0) + 1  # type: ignore[attr-defined]
            longest[0] = max(longest[0], time.monotonic() - started)

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(4)]
    for thread in callers:
        thread.start()

    # Execute: the server is killed while the pulls wait, three times, and comes back. The
    # sleeps are the scenario's pacing: half a deadline into the held pulls, half a second
    # down, then a whole deadline for the last pulls to end by theirs.
    for _ in range(3):
        time.sleep(DEADLINE / 2)
        holding_server.kill()
        time.sleep(0.5)
        holding_server.start()
    time.sleep(DEADLINE)
    stop.set()
    for thread in callers:
        thread.join(timeout=3 * DEADLINE)

    # Assert
    channel.close()
    hung = sum(thread.is_alive() for thread in callers)
    assert hung == 0, f"{hung} pull(s) still blocked long after their {DEADLINE}s deadline"
    assert codes.get(grpc.StatusCode.UNAVAILABLE, 0) >= 1, codes  # the kills were seen
    assert longest[0] < DEADLINE + 1.0
