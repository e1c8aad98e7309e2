"""How close a shard's Pull + Push come to raw gRPC streaming and to raw TCP on the same machine.

Starts three processes: a real shard (``python -m pscluster.server --port 0``), a bare gRPC
streaming echo server (this file with ``--echo-server``: byte chunks, no protobuf, no copies,
no locks, no optimizer), both with 1 MB chunks, and a raw TCP server (``--tcp-server``: plain
sockets, no framing beyond a 9-byte command, ``sendall`` of the whole buffer and
``recv_into`` a preallocated one). For a 64 MB float32 vector it times (a) echo: 64 MB
downloaded from the echo server + 64 MB uploaded to it, (b) PS: a Pull of the 64 MB vector + a
Push of a 64 MB gradient (async mode, plain SGD with a tiny lr), and (c) TCP: the same 64 MB
down and up over one loopback socket, in alternation so that load from other processes hits
all three alike. The client does the same tensor
work in both: it assembles the download into one buffer and uploads chunks cut from a tensor
(the PS client frames them with pscluster.transport.framing, as a worker should), so the ratio
measures what the shard and its protocol add; PS/TCP measures what gRPC, HTTP/2 and the shard
add together over the bytes alone. It prints the median MB/s of each and the ratios PS/echo and
PS/TCP, and writes them to bench/results/transport.json and a bar plot transport.png. Target:
PS/echo >= 0.8 (PS/TCP has no target: it is the ceiling of any protocol on this machine).

    .venv/bin/python bench/transport.py [--mb 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import torch

from pscluster.config import Settings
from pscluster.shard_client import ShardClient, ShardRange
from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.transport.server import server_options
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots  # noqa: E402

CHUNK = 1 << 20
ECHO_SERVICE = "bench.Echo"
_SERVING = re.compile(r"serving .* on [\w.\-]+:(\d+)")
_START_TIMEOUT = 60.0


def _identity(data: bytes) -> bytes:
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
                download, request_deserializer=_identity, response_serializer=_identity
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=_identity, response_serializer=_identity
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
_COMMAND = struct.Struct("<cQ")


def _recv_exactly(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n


def _serve_tcp_connection(conn: socket.socket, payload: bytes, sink: memoryview) -> None:
    header = memoryview(bytearray(_COMMAND.size))
    with conn:
        while True:
            try:
                _recv_exactly(conn, header)
            except ConnectionError:
                return  # the client is done
            command, size = _COMMAND.unpack(header)
            if size > len(payload):
                raise ValueError(f"asked for {size} bytes; this server holds {len(payload)}")
            if command == b"D":
                conn.sendall(memoryview(payload)[:size])
            elif command == b"U":
                _recv_exactly(conn, sink[:size])
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


# --- the client side ---


def start(cmd: list[str]) -> tuple[subprocess.Popen[str], int]:
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


def echo_round(channel: grpc.Channel, payload: memoryview) -> tuple[float, float]:
    """Download the echo server's bytes into a buffer, upload a tensor's bytes: the client does
    the same tensor work as a PS round, so the ratio isolates the shard and its protocol."""
    download = channel.unary_stream(
        f"/{ECHO_SERVICE}/Download", request_serializer=_identity, response_deserializer=_identity
    )
    upload = channel.stream_unary(
        f"/{ECHO_SERVICE}/Upload", request_serializer=_identity, response_deserializer=_identity
    )
    t0 = time.perf_counter()
    wire.fill(bytearray(len(payload)), download(b"", timeout=120))
    t1 = time.perf_counter()
    sent = int.from_bytes(upload(wire.chunks(payload, CHUNK), timeout=120), "little")
    t2 = time.perf_counter()
    if sent != len(payload):
        raise RuntimeError(f"echo received {sent} bytes; expected {len(payload)}")
    return t1 - t0, t2 - t1


def tcp_round(conn: socket.socket, payload: memoryview) -> tuple[float, float]:
    """64 MB down into one preallocated buffer and the tensor's bytes up, on one socket: what
    the bytes cost on loopback with no protocol at all."""
    t0 = time.perf_counter()
    conn.sendall(_COMMAND.pack(b"D", len(payload)))
    buffer = bytearray(len(payload))
    _recv_exactly(conn, memoryview(buffer))
    t1 = time.perf_counter()
    conn.sendall(_COMMAND.pack(b"U", len(payload)))
    conn.sendall(payload)
    ack = bytearray(8)
    _recv_exactly(conn, memoryview(ack))
    t2 = time.perf_counter()
    if int.from_bytes(ack, "little") != len(payload):
        raise RuntimeError(f"TCP server acknowledged {ack!r}; expected {len(payload)} bytes")
    return t1 - t0, t2 - t1


class PSBench:
    """A worker's round against one shard, through the shard client workers use (framed data
    chunks, a pull received in place)."""

    def __init__(self, address: str, mb: int) -> None:
        self.client = ShardClient(Settings(chunk_bytes=CHUNK))
        self.length = mb * CHUNK // 4
        self.ranges = [ShardRange(address, 0, self.length)]
        self.grad = {0: wire.encode(torch.full((self.length,), 1e-3))}
        self.into = (torch.empty(self.length), torch.empty(0, dtype=torch.float64))
        self.seq = 0
        config = ps_pb2.ShardJobConfig(
            job_id="bench",
            length=self.length,
            mode="async",
            optimizer=common_pb2.OptimizerConfig(name="sgd", lr=1e-9),
        )
        self.client.init_job([(address, config, torch.randn(self.length))])
        self.client.set_members([address], "bench", ["bench"], generation=1)

    def round(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        snap = self.client.pull_all(
            "bench", self.ranges, worker_id="bench", timeout=120, into=self.into
        )
        t1 = time.perf_counter()
        self.seq += 1
        reply = self.client.push_all(
            "bench",
            self.ranges,
            self.grad,
            worker_id="bench",
            seq=self.seq,
            codec="none",
            base=snap,
            batch_size=1,
            timeout=120,
        )[0]
        t2 = time.perf_counter()
        if not isinstance(reply, ps_pb2.PushReply) or reply.outcome != ps_pb2.PUSH_OUTCOME_APPLIED:
            raise RuntimeError(f"push not applied: {reply}")
        return t1 - t0, t2 - t1


def measure(rounds: Callable[[], tuple[float, float]], mb: int) -> dict[str, float]:
    down, up = rounds()
    return {"down_s": down, "up_s": up, "mb_per_s": 2 * mb * CHUNK / 1e6 / (down + up)}


def summarize(samples: list[dict[str, float]], mb: int) -> dict[str, Any]:
    return {
        "median_mb_per_s": statistics.median(s["mb_per_s"] for s in samples),
        "median_down_mb_per_s": statistics.median(mb * CHUNK / 1e6 / s["down_s"] for s in samples),
        "median_up_mb_per_s": statistics.median(mb * CHUNK / 1e6 / s["up_s"] for s in samples),
        "samples_mb_per_s": [round(s["mb_per_s"], 1) for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="vector size in MB (float32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transport.json")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tcp-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mb < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--mb and --repeats must be at least 1 and --warmup at least 0")
    settings = Settings()
    if args.echo_server:
        run_echo_server(settings.host, args.mb)
        return
    if args.tcp_server:
        run_tcp_server(settings.host, args.mb)
        return

    here = str(Path(__file__).resolve())
    procs: list[subprocess.Popen[str]] = []
    try:
        shard, shard_port = start([sys.executable, "-m", "pscluster.server", "--port", "0"])
        procs.append(shard)
        echo, echo_port = start([sys.executable, here, "--echo-server", "--mb", str(args.mb)])
        procs.append(echo)
        tcp, tcp_port = start([sys.executable, here, "--tcp-server", "--mb", str(args.mb)])
        procs.append(tcp)
        ps_channel = open_channel(f"{settings.host}:{shard_port}", settings)
        echo_channel = open_channel(f"{settings.host}:{echo_port}", settings)
        wait_ready(ps_channel, 30)
        wait_ready(echo_channel, 30)
        tcp_conn = socket.create_connection((settings.host, tcp_port), timeout=120)
        tcp_conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ps = PSBench(f"{settings.host}:{shard_port}", args.mb)
        payload = wire.encode(torch.full((ps.length,), 1e-3))
        results: dict[str, list[dict[str, float]]] = {"echo": [], "ps": [], "tcp": []}
        with tcp_conn:
            for i in range(args.warmup + args.repeats):
                samples = {
                    "echo": measure(lambda: echo_round(echo_channel, payload), args.mb),
                    "ps": measure(ps.round, args.mb),
                    "tcp": measure(lambda: tcp_round(tcp_conn, payload), args.mb),
                }
                if i >= args.warmup:
                    for name, sample in samples.items():
                        results[name].append(sample)
        report = {name: summarize(samples, args.mb) for name, samples in results.items()}
        ps_rate = report["ps"]["median_mb_per_s"]
        ratio = ps_rate / report["echo"]["median_mb_per_s"]
        ratio_tcp = ps_rate / report["tcp"]["median_mb_per_s"]
        summary = {
            "vector_mb": args.mb,
            "chunk_bytes": CHUNK,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "command": " ".join(["python", "bench/transport.py", *sys.argv[1:]]),
            "echo": report["echo"],
            "ps": report["ps"],
            "tcp": report["tcp"],
            "ratio_ps_over_echo": ratio,
            "ratio_ps_over_tcp": ratio_tcp,
            "ratio_echo_over_tcp": report["echo"]["median_mb_per_s"]
            / report["tcp"]["median_mb_per_s"],
            "target_ratio": 0.8,
        }
        print(f"{'':6} {'MB/s (down+up)':>15} {'down MB/s':>10} {'up MB/s':>10}")
        for name in ("tcp", "echo", "ps"):
            r = report[name]
            print(
                f"{name:6} {r['median_mb_per_s']:15.0f} {r['median_down_mb_per_s']:10.0f} "
                f"{r['median_up_mb_per_s']:10.0f}"
            )
        print(f"ratio ps/echo = {ratio:.2f} (target >= 0.8); ps/tcp = {ratio_tcp:.2f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        png = args.out.with_suffix(".png")
        plots.transport(summary, png)
        print(f"wrote {args.out} and {png}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
