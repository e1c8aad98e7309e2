"""Where an adopting shard's time goes when it takes a fixed table's rows in a move, in one
process: each old shard picking out the rows (``moving_rows.outgoing``), writing them as an
image, the image cut into 1 MB chunks and joined again (what gRPC carries), parsed with its
CRCs, and the new shard putting them in place (``moving_rows.incoming``). One new shard of 3
and its two sources, for a table of ``--rows`` rows of 16 with a rowwise accumulator.

    .venv/bin/python bench/moving_rows_profile.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.server.tables.moving_rows import incoming, outgoing
from pscluster.server.tables.spec import TableSpec

CHUNK = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    rows = parser.parse_args().rows

    def spec(shards: int, index: int) -> TableSpec:
        return TableSpec("t", rows, 16, shards, index)

    olds = [
        {"0.weight": torch.randn(n, 16), "0.opt.sum": torch.rand(n)}
        for n in (spec(2, k).local_rows for k in range(2))
    ]
    phases: dict[str, float] = {}
    at = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal at
        now = time.perf_counter()
        phases[name] = now - at
        at = now

    parts = [outgoing(olds[k], [spec(2, k)], 3, 0) for k in range(2)]
    phase("pick out (old shards)")
    images = [state_to_bytes(p, {}) for p in parts]
    phase("write the images")
    joined = [b"".join(i[j : j + CHUNK] for j in range(0, len(i), CHUNK)) for i in images]
    phase("chunk and join")
    received = [state_from_bytes(i)[0] for i in joined]
    phase("parse with CRCs")
    incoming(received, [spec(3, 0)])
    phase("put in place (new shard)")
    print(
        f"{rows:,} rows of 16: new shard 0 of 3 from 2 old shards, "
        f"{sum(len(i) for i in images) / 1e6:.1f} MB"
    )
    for name, seconds in phases.items():
        print(f"  {name:26s} {seconds:.3f} s")
    print(f"  {'in all':26s} {sum(phases.values()):.3f} s")


if __name__ == "__main__":
    main()
