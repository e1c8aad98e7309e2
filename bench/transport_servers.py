"""The two reference servers of bench/transport.py, each run as its own process (as the shard
is) by ``bench/transport.py --echo-server`` or ``--tcp-server``: a bare gRPC streaming echo
(byte chunks, no protobuf, no copies, no locks, no optimizer) and a raw TCP server (plain
sockets, a 9-byte command, ``sendall`` of the whole buffer, ``recv_into`` a preallocated one).
Both print "serving ... on host:port" to stderr once bound, as the shard does, and
``start_server`` reads the port from that line. The client side's helpers for their protocols
(``identity``, ``COMMAND``, ``recv_exactly``) live here too."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from pscluster.config import Settings
from pscluster.transport.server import server_options

CHUNK = 1 << 20
ECHO_SERVICE = "bench.Echo"
ROOT = Path(__file__).resolve().parent.parent
_SERVING = re.compile(r"serving .* on [\w.\-]+:(\d+)")
_START_TIMEOUT = 60.0


def identity(data: bytes) -> bytes:
    return data


# --- the echo server (a separate process, as the shard is) ---
def run_echo_server(host: str, mb: int) -> None:
    payload = [os.urandom(CHUNK) for _ in range(mb)]

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from payload

    def upload(chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        received = sum(len(c) for c in chunks)
        return received.to_bytes(8, "little")

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Download": grpc.unary_stream_rpc_method_handler(
                download, request_deserializer=identity, response_serializer=identity
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    settings = Settings()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=server_options(settings)
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    print(f"serving {ECHO_SERVICE} on {host}:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


# --- the raw TCP server (a separate process too): the bytes alone, no protocol ---
# A command is one byte and a little-endian byte count: b"D" asks for that many bytes, b"U"
# announces that many; the upload is acknowledged by the same 8-byte count.
COMMAND = struct.Struct("<cQ")


def recv_exactly(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n


def _serve_tcp_connection(conn: socket.socket, payload: bytes, sink: memoryview) -> None:
    header = memoryview(bytearray(COMMAND.size))
    with conn:
        while True:
            try:
                recv_exactly(conn, header)
            except ConnectionError:
                return  # the client is done
            command, size = COMMAND.unpack(header)
            if size > len(payload):
                raise ValueError(f"asked for {size} bytes; this server holds {len(payload)}")
            if command == b"D":
                conn.sendall(memoryview(payload)[:size])
            elif command == b"U":
                recv_exactly(conn, sink[:size])
                conn.sendall(size.to_bytes(8, "little"))
            else:
                raise ValueError(f"unknown command {command!r}; expected b'D' or b'U'")


def run_tcp_server(host: str, mb: int) -> None:
    payload = os.urandom(mb * CHUNK)
    sink = memoryview(bytearray(mb * CHUNK))
    with socket.create_server((host, 0)) as server:
        port = server.getsockname()[1]
        print(f"serving raw TCP on {host}:{port}", file=sys.stderr, flush=True)
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=_serve_tcp_connection, args=(conn, payload, sink), daemon=True
            ).start()


# --- starting a server process (these two, or a shard) ---
def start_server(cmd: list[str]) -> tuple[subprocess.Popen[str], int]:
    """Start a server process and read its bound port from its "serving ... on" log line."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PSC_LOG_LEVEL": "INFO"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = _SERVING.search(line)
        if match:
            # Keep reading its log so a chatty server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError(f"{cmd} did not report a port within {_START_TIMEOUT}s")
