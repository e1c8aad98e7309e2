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
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import torch

from pscluster.config import Settings
from pscluster.shard_client import ShardClient, ShardRange
from pscluster.transport import wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import plots  # noqa: E402
from bench.transport_servers import (  # noqa: E402
    CHUNK,
    COMMAND,
    ECHO_SERVICE,
    identity,
    recv_exactly,
    run_echo_server,
    run_tcp_server,
    start_server,
)


def echo_round(channel: grpc.Channel, payload: memoryview) -> tuple[float, float]:
    """Download the echo server's bytes into a buffer, upload a tensor's bytes: the client does
    the same tensor work as a PS round, so the ratio isolates the shard and its protocol."""
    download = channel.unary_stream(
        f"/{ECHO_SERVICE}/Download", request_serializer=identity, response_deserializer=identity
    )
    upload = channel.stream_unary(
        f"/{ECHO_SERVICE}/Upload", request_serializer=identity, response_deserializer=identity
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
    conn.sendall(COMMAND.pack(b"D", len(payload)))
    buffer = bytearray(len(payload))
    recv_exactly(conn, memoryview(buffer))
    t1 = time.perf_counter()
    conn.sendall(COMMAND.pack(b"U", len(payload)))
    conn.sendall(payload)
    ack = bytearray(8)
    recv_exactly(conn, memoryview(ack))
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


def parse_args() -> argparse.Namespace:
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
    return args


def start_servers(mb: int, procs: list[subprocess.Popen[str]]) -> tuple[int, int, int]:
    """The shard, the echo server and the TCP server as processes (appended to ``procs``, for
    the caller to stop): their ports."""
    here = str(Path(__file__).resolve())
    shard, shard_port = start_server([sys.executable, "-m", "pscluster.server", "--port", "0"])
    procs.append(shard)
    echo, echo_port = start_server([sys.executable, here, "--echo-server", "--mb", str(mb)])
    procs.append(echo)
    tcp, tcp_port = start_server([sys.executable, here, "--tcp-server", "--mb", str(mb)])
    procs.append(tcp)
    return shard_port, echo_port, tcp_port


def measure_rounds(
    args: argparse.Namespace, settings: Settings, ports: tuple[int, int, int]
) -> dict[str, list[dict[str, float]]]:
    """``--warmup`` + ``--repeats`` rounds of echo, PS and TCP in alternation, so that load
    from other processes hits all three alike; the warmup rounds are left out."""
    shard_port, echo_port, tcp_port = ports
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
    return results


def summary_of(report: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ps_rate = report["ps"]["median_mb_per_s"]
    return {
        "vector_mb": args.mb,
        "chunk_bytes": CHUNK,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "command": " ".join(["python", "bench/transport.py", *sys.argv[1:]]),
        "echo": report["echo"],
        "ps": report["ps"],
        "tcp": report["tcp"],
        "ratio_ps_over_echo": ps_rate / report["echo"]["median_mb_per_s"],
        "ratio_ps_over_tcp": ps_rate / report["tcp"]["median_mb_per_s"],
        "ratio_echo_over_tcp": report["echo"]["median_mb_per_s"] / report["tcp"]["median_mb_per_s"],
        "target_ratio": 0.8,
    }


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'':6} {'MB/s (down+up)':>15} {'down MB/s':>10} {'up MB/s':>10}")
    for name in ("tcp", "echo", "ps"):
        r = summary[name]
        print(
            f"{name:6} {r['median_mb_per_s']:15.0f} {r['median_down_mb_per_s']:10.0f} "
            f"{r['median_up_mb_per_s']:10.0f}"
        )
    ratio, ratio_tcp = summary["ratio_ps_over_echo"], summary["ratio_ps_over_tcp"]
    print(f"ratio ps/echo = {ratio:.2f} (target >= 0.8); ps/tcp = {ratio_tcp:.2f}")


def main() -> None:
    args = parse_args()
    settings = Settings()
    if args.echo_server:
        run_echo_server(settings.host, args.mb)
        return
    if args.tcp_server:
        run_tcp_server(settings.host, args.mb)
        return
    procs: list[subprocess.Popen[str]] = []
    try:
        ports = start_servers(args.mb, procs)
        results = measure_rounds(args, settings, ports)
        report = {name: summarize(samples, args.mb) for name, samples in results.items()}
        summary = summary_of(report, args)
        print_table(summary)
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
