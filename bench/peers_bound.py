"""A lower bound for a parameter-server step on this machine, from two measurements made in the
same run: the model's compute per step in one process (forward and backward of one batch, at
the threads a worker gets) and raw TCP's bandwidth on loopback (a 9-byte command, then the
bytes with ``sendall`` into a preallocated buffer with ``recv_into``: no protocol at all).

A step moves the parameters down and the gradient up: ``2 x 4 x parameters`` bytes. So one
worker's step takes at least ``compute + bytes / bandwidth`` when nothing overlaps, and at
least ``max(compute, bytes / bandwidth)`` when communication hides entirely behind compute.
The bounds ignore what sharing the cores costs (N workers, the shards and DDP's peers all run
on the same 2 cores here), so they are optimistic; the distance to them is what protocol,
serialization, the shard's optimizer and the log cost.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.peers_common import ModelBench, load_module
from bench.transport import tcp_round
from bench.transport_servers import start_server

ROUNDS = 7


def compute_seconds(model: ModelBench, threads: int, rounds: int = 20) -> float:
    """Median seconds of forward + backward of one batch (the bench's batch size)."""
    torch.set_num_threads(max(1, threads))
    net = model.model_class(**model.model_kwargs)
    train, _ = load_module(model.data_file).load()
    x = torch.as_tensor(train[0][: model.batch_size], dtype=torch.float32)
    y = torch.as_tensor(train[1][: model.batch_size], dtype=torch.long)
    times = []
    for _ in range(rounds + 3):
        net.zero_grad(set_to_none=True)
        started = time.perf_counter()
        torch.nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])  # the first rounds warm the allocator up


def tcp_seconds(nbytes: int) -> tuple[float, float]:
    """Median seconds to move ``nbytes`` down and up over raw TCP on loopback."""
    mb = max(1, -(-nbytes // (1 << 20)))
    here = str(Path(__file__).resolve().parent / "transport.py")
    proc, port = start_server([sys.executable, here, "--tcp-server", "--mb", str(mb)])
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=120)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = memoryview(bytearray(nbytes))
        with conn:
            rounds = [tcp_round(conn, payload) for _ in range(ROUNDS + 1)][1:]
    finally:
        proc.kill()
        proc.wait()
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


def step_bound(model: ModelBench, threads: int) -> dict[str, Any]:
    """The measurements and the two bounds for one worker's step, in milliseconds."""
    params = model.params
    compute = compute_seconds(model, threads)
    down, up = tcp_seconds(4 * params)
    comm = down + up
    return {
        "params": params,
        "bytes_per_step": 8 * params,
        "compute_ms": 1000 * compute,
        "tcp_down_ms": 1000 * down,
        "tcp_up_ms": 1000 * up,
        "tcp_mb_per_s": 8 * params / comm / 1e6,
        "serial_bound_ms": 1000 * (compute + comm),
        "overlap_bound_ms": 1000 * max(compute, comm),
    }


def distances(
    rows: list[dict[str, Any]], bounds: dict[str, dict[str, Any]], models: list[ModelBench]
) -> list[dict[str, Any]]:
    """For each pscluster row with a push per step: a worker's measured step (whole-run
    samples/s over the workers, at the model's batch) against the bounds of its model and
    process count, and where its step went (the phases its workers reported)."""
    batch = {m.name: m.batch_size for m in models}
    out = []
    for r in rows:
        bound = bounds.get(f"{r['model']}/{r['processes']}")
        one_step = r["system"] == "pscluster" and not r.get("local_steps")
        if not one_step or not bound or not r["samples_per_s"]:
            continue
        step_ms = 1000 * batch[r["model"]] * r["processes"] / r["samples_per_s"]
        out.append(
            {
                "model": r["model"],
                "processes": r["processes"],
                "label": r["label"],
                "step_ms": round(step_ms, 1),
                "x_serial_bound": round(step_ms / bound["serial_bound_ms"], 2),
                "x_overlap_bound": round(step_ms / bound["overlap_bound_ms"], 2),
                "phases_ms": r.get("phases_ms", {}),
            }
        )
    return out
