"""What durability costs a shard: push throughput with the write-ahead log against memory only.

Starts one shard in this process on a free port for each setting (memory only, then
``wal_fsync`` never / interval / always with the default checkpoint thresholds), inits an async
plain-SGD job of ``--mb`` MB of float32 values, and lets ``--pushers`` threads, one worker id
each, push as fast as they can for ``--seconds``. Prints pushes/s per setting and the ratio to
memory only (a markdown table). Clients and shard share this process and its cores, so the
absolute figures are a floor; the ratios are the point.

    .venv/bin/python bench/durability.py [--mb 1] [--pushers 4] [--seconds 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pscluster.config import Settings  # noqa: E402
from pscluster.server.main import serve  # noqa: E402
from pscluster.shard_client import ShardClient, ShardRange, Snapshot  # noqa: E402
from pscluster.transport import wire  # noqa: E402
from pscluster.v1 import common_pb2  # noqa: E402
from pscluster.v1 import parameter_server_pb2 as ps_pb2  # noqa: E402

SETTINGS = ("memory", "never", "interval", "always")


def measure(setting: str, length: int, pushers: int, seconds: float, folder: Path) -> float:
    """Pushes per second that ``pushers`` threads get through one shard with ``setting``."""
    extra = {} if setting == "memory" else {"shard_data_dir": folder, "wal_fsync": setting}
    settings = Settings(host="127.0.0.1", grace_seconds=0.0, **extra)  # type: ignore[arg-type]
    running = serve(settings, port=0)
    address = f"127.0.0.1:{running.port}"
    client = ShardClient(settings)
    try:
        config = ps_pb2.ShardJobConfig(
            job_id="bench",
            length=length,
            mode="async",
            optimizer=common_pb2.OptimizerConfig(name="sgd", lr=1e-6),
        )
        client.init_job([(address, config, torch.zeros(length))])
        workers = [f"w{i}" for i in range(pushers)]
        client.set_members([address], "bench", workers, generation=1)
        ranges = [ShardRange(address, 0, length)]
        base = Snapshot(torch.empty(0), torch.empty(0), [0], [0])
        body = {0: wire.encode(torch.randn(length) * 1e-3)}
        counts = [0] * pushers
        stop = time.monotonic() + seconds

        def push(index: int) -> None:
            seq = 0
            while time.monotonic() < stop:
                seq += 1
                (reply,) = client.push_all(
                    "bench",
                    ranges,
                    body,
                    worker_id=workers[index],
                    seq=seq,
                    codec="none",
                    base=base,
                    batch_size=1,
                    timeout=60,
                ).values()
                if isinstance(reply, Exception):
                    raise reply
                counts[index] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=push, args=(i,)) for i in range(pushers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 120)
        return sum(counts) / (time.monotonic() - started)
    finally:
        client.close()
        running.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=1.0, help="gradient size in MB")
    parser.add_argument("--pushers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="per setting")
    args = parser.parse_args()
    length = int(args.mb * (1 << 20)) // 4
    rates = {}
    with tempfile.TemporaryDirectory(prefix="psc-durability-") as tmp:
        for setting in SETTINGS:
            rates[setting] = measure(
                setting, length, args.pushers, args.seconds, Path(tmp) / setting
            )
            print(f"{setting}: {rates[setting]:.1f} pushes/s", file=sys.stderr)
    print(f"\n{args.mb:g} MB pushes, {args.pushers} pushers, {args.seconds:g} s per setting\n")
    print("| setting | pushes/s | MB/s | vs memory only |")
    print("|---|---:|---:|---:|")
    for setting, rate in rates.items():
        label = "memory only" if setting == "memory" else f"wal_fsync={setting}"
        ratio = rate / rates["memory"]
        print(f"| {label} | {rate:.1f} | {rate * args.mb:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
