"""How close a shard's Pull + Push come to raw gRPC streaming on the same machine.

Starts two processes: a real shard (``python -m pscluster.server --port 0``) and a bare gRPC
streaming echo server (this file with ``--echo-server``: byte chunks, no protobuf, no copies,
no locks, no optimizer), both with 1 MB chunks. For a 64 MB float32 vector it times
(a) echo: 64 MB downloaded from the echo server + 64 MB uploaded to it, and (b) PS: a Pull of
the 64 MB vector + a Push of a 64 MB gradient (async mode, plain SGD with a tiny lr), in
alternation so that load from other processes hits both alike. The client does the same tensor
work in both: it assembles the download into one buffer and uploads chunks cut from a tensor
(the PS client frames them with pscluster.transport.framing, as a worker should), so the ratio
measures what the shard and its protocol add. It prints the median MB/s of each and the ratio
PS/echo, and writes them to bench/results/transport.json. Target: ratio >= 0.8.

    .venv/bin/python bench/transport.py [--mb 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, cast

import grpc
import torch

from pscluster.config import Settings
from pscluster.transport import framing, wire
from pscluster.transport.channel import open_channel, wait_ready
from pscluster.transport.server import server_options
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.v1 import parameter_server_pb2_grpc as ps_grpc

ROOT = Path(__file__).resolve().parent.parent
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
    buffer = wire.Assembler(len(payload))
    for chunk in download(b"", timeout=120):
        buffer.add(chunk)
    buffer.result()
    t1 = time.perf_counter()
    sent = int.from_bytes(upload(wire.chunks(payload, CHUNK), timeout=120), "little")
    t2 = time.perf_counter()
    if sent != len(payload):
        raise RuntimeError(f"echo received {sent} bytes; expected {len(payload)}")
    return t1 - t0, t2 - t1


class PSBench:
    def __init__(self, channel: grpc.Channel, mb: int) -> None:
        self.stub = ps_grpc.ParameterServerStub(channel)
        # Data chunks framed and parsed without protobuf copies, as pscluster.server does.
        self.pull = channel.unary_stream(
            "/pscluster.v1.ParameterServer/Pull",
            request_serializer=ps_pb2.PullRequest.SerializeToString,
            response_deserializer=framing.parser(ps_pb2.PullChunk.FromString),
        )
        self.push = channel.stream_unary(
            "/pscluster.v1.ParameterServer/Push",
            request_serializer=framing.serializer,
            response_deserializer=ps_pb2.PushReply.FromString,
        )
        self.length = mb * CHUNK // 4
        self.grad = torch.full((self.length,), 1e-3)
        self.seq = 0
        config = ps_pb2.ShardJobConfig(
            job_id="bench",
            length=self.length,
            mode="async",
            optimizer=common_pb2.OptimizerConfig(name="sgd", lr=1e-9),
        )
        values = wire.encode(torch.randn(self.length))

        def init() -> Iterator[ps_pb2.InitJobChunk]:
            yield ps_pb2.InitJobChunk(config=config)
            for piece in wire.chunks(values, CHUNK):
                yield ps_pb2.InitJobChunk(data=piece)

        self.stub.InitJob(init(), timeout=120)
        self.stub.SetMembers(
            ps_pb2.SetMembersRequest(job_id="bench", worker_ids=["bench"], generation=1),
            timeout=30,
        )

    def round(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        stream = iter(self.pull(ps_pb2.PullRequest(job_id="bench", worker_id="bench"), timeout=120))
        first = next(stream)
        if not isinstance(first, ps_pb2.PullChunk):
            raise RuntimeError("a pull stream must start with its header")
        header = first.header
        buffer = wire.Assembler(header.length * 4)
        for chunk in stream:
            buffer.add(cast(bytes, chunk))
        wire.decode(buffer.result(), header.dtype, header.length)
        t1 = time.perf_counter()
        self.seq += 1
        push_header = ps_pb2.PushHeader(
            job_id="bench",
            worker_id="bench",
            seq=self.seq,
            base_version=header.version,
            base_clock=header.clock,
            length=self.length,
            dtype=common_pb2.DTYPE_FLOAT32,
        )

        def chunks() -> Iterator[ps_pb2.PushChunk | bytes]:
            yield ps_pb2.PushChunk(header=push_header)
            yield from framing.frames(wire.encode(self.grad), CHUNK)

        reply = self.push(chunks(), timeout=120)
        t2 = time.perf_counter()
        if reply.outcome != ps_pb2.PUSH_OUTCOME_APPLIED:
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
    args = parser.parse_args()
    settings = Settings()
    if args.echo_server:
        run_echo_server(settings.host, args.mb)
        return

    shard, shard_port = start([sys.executable, "-m", "pscluster.server", "--port", "0"])
    echo, echo_port = start(
        [sys.executable, str(Path(__file__).resolve()), "--echo-server", "--mb", str(args.mb)]
    )
    try:
        ps_channel = open_channel(f"{settings.host}:{shard_port}", settings)
        echo_channel = open_channel(f"{settings.host}:{echo_port}", settings)
        wait_ready(ps_channel, 30)
        wait_ready(echo_channel, 30)
        ps = PSBench(ps_channel, args.mb)
        echo_payload = wire.encode(torch.full((ps.length,), 1e-3))
        results: dict[str, list[dict[str, float]]] = {"echo": [], "ps": []}
        for i in range(args.warmup + args.repeats):
            echo_sample = measure(lambda: echo_round(echo_channel, echo_payload), args.mb)
            ps_sample = measure(ps.round, args.mb)
            if i >= args.warmup:
                results["echo"].append(echo_sample)
                results["ps"].append(ps_sample)
        report = {name: summarize(samples, args.mb) for name, samples in results.items()}
        ratio = report["ps"]["median_mb_per_s"] / report["echo"]["median_mb_per_s"]
        summary = {
            "vector_mb": args.mb,
            "chunk_bytes": CHUNK,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "echo": report["echo"],
            "ps": report["ps"],
            "ratio_ps_over_echo": ratio,
            "target_ratio": 0.8,
        }
        print(f"{'':6} {'MB/s (down+up)':>15} {'down MB/s':>10} {'up MB/s':>10}")
        for name in ("echo", "ps"):
            r = report[name]
            print(
                f"{name:6} {r['median_mb_per_s']:15.0f} {r['median_down_mb_per_s']:10.0f} "
                f"{r['median_up_mb_per_s']:10.0f}"
            )
        print(f"ratio ps/echo = {ratio:.2f} (target >= 0.8)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        for proc in (shard, echo):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
