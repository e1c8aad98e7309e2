"""What a row of a shard's embedding table costs in memory: the process's resident memory.

Each case runs in a fresh process: a table on one shard is filled as training fills it
(lookups of batches of new hashed ids, which admit them, each followed by an apply of their
gradients), then the growth of the process's anonymous resident memory (RssAnon: not the
libraries' code, which the first run of a kernel pages in; after a warm-up table and with the
heap's free memory given back, as the table does after growing) is divided by the rows held
and set against the row's values and optimizer state. Dynamic
tables at 1M-25M rows (25M: one of two shards of a 50M-row table) and each row optimizer; a
dynamic table churning through 3x its capacity; a fixed table of the same rows beside each.
The peak (VmHWM) shows the transient of growth (an index rehash, a new reservation). At the
largest size, the bytes of a full checkpoint and of an incremental one after 100 steps.

    python bench/table_memory.py                  # ~3 min; results/table_memory.json
    python bench/table_memory.py --quick          # 1M and 4M rows only
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine
from pscluster.heap import give_back_freed
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.tables.dynamic import DynamicTable
from pscluster.server.tables.spec import TableSpec
from pscluster.server.tables.table import FixedTable

RESULTS = Path(__file__).parent / "results" / "table_memory.json"
DIM = 16
BATCH = 65_536  # new ids per fill step
STEP_IDS = 8_192  # ids of a training step's lookup on one shard (bench/sparse.py: 4.9k-8.7k)
OPTIMIZERS = {
    "sgd": SparseOptimizerSpec(name="sgd", lr=0.1),
    "rowwise_adagrad": SparseOptimizerSpec(name="rowwise_adagrad", lr=0.05, eps=1e-8),
    "adagrad": SparseOptimizerSpec(name="adagrad", lr=0.05, eps=1e-10),
    "lazy_adam": SparseOptimizerSpec(name="lazy_adam", lr=1e-3, eps=1e-8),
}
STATE_FLOATS = {"sgd": 0, "rowwise_adagrad": 1, "adagrad": DIM, "lazy_adam": 2 * DIM}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def fill(
    table: DynamicTable | FixedTable, rows: int, distinct: int, dynamic: bool, batch: int = BATCH
) -> float:
    """Steps of `batch` new ids until `distinct` ids have been seen (ids drawn from int64 for
    a dynamic table, 0..rows for a fixed one); returns the seconds it took."""
    rng = np.random.default_rng(0)
    start, seen = time.perf_counter(), 0
    while seen < distinct:
        n = min(batch, distinct - seen)
        if dynamic:
            ids = torch.from_numpy(rng.integers(0, 2**62, n))
        else:
            ids = torch.arange(seen, seen + n, dtype=torch.int64) % rows
        table.lookup(ids)
        if isinstance(table, DynamicTable):
            table.take_admitted()  # the shard logs them, and keeps nothing
        table.apply(ids, torch.full((n, DIM), 0.01))
        seen += n
    return time.perf_counter() - start


def step_ms(table: DynamicTable | FixedTable, rows: int, dynamic: bool) -> dict[str, float]:
    """Median ms of a training step's lookup and apply of STEP_IDS held ids."""
    held = (
        torch.from_numpy(table.index.items()[0])
        if isinstance(table, DynamicTable)
        else torch.arange(rows)
    )
    times: dict[str, list[float]] = {"lookup": [], "apply": []}
    rng = np.random.default_rng(1)
    for _ in range(15):
        ids = held[torch.from_numpy(rng.integers(0, held.numel(), STEP_IDS))]
        t0 = time.perf_counter()
        table.lookup(ids)
        t1 = time.perf_counter()
        table.apply(ids, torch.full((STEP_IDS, DIM), 0.01))
        times["lookup"].append(t1 - t0)
        times["apply"].append(time.perf_counter() - t1)
    return {f"{k}_ms": round(1000 * float(np.median(v)), 2) for k, v in times.items()}


def tensor_mb(tensors: dict[str, torch.Tensor]) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20, 1)


def checkpoints(table: DynamicTable | FixedTable, rows: int, steps: int = 100) -> dict[str, Any]:
    """A full checkpoint's size and time, then a delta's after `steps` training steps (of
    STEP_IDS ids, a fifth of them from a hot 1%): what a shard writes each interval."""
    t0 = time.perf_counter()
    full = table.state()[0]
    full_s = time.perf_counter() - t0
    table.mark_clean()
    held = (
        torch.from_numpy(table.index.items()[0])
        if isinstance(table, DynamicTable)
        else torch.arange(rows)
    )
    rng = np.random.default_rng(2)
    hot = held[: max(1, held.numel() // 100)]
    for _ in range(steps):
        cold = held[torch.from_numpy(rng.integers(0, held.numel(), STEP_IDS * 4 // 5))]
        ids = torch.cat([cold, hot[torch.from_numpy(rng.integers(0, hot.numel(), STEP_IDS // 5))]])
        table.apply(ids, torch.full((ids.numel(), DIM), 0.01))
    t1 = time.perf_counter()
    delta = table.delta()[0]
    return {
        "full_checkpoint_mb": tensor_mb(full),
        "full_checkpoint_s": round(full_s, 2),
        "delta_after_steps": steps,
        "delta_rows": int(delta["slots"].numel()),
        "delta_mb": tensor_mb(delta),
        "delta_s": round(time.perf_counter() - t1, 2),
    }


def one(case: dict[str, Any]) -> dict[str, Any]:
    """Runs one case in this process (a fresh one) and returns its figures."""
    dynamic, rows, opt = case["kind"] == "dynamic", case["rows"], case["optimizer"]
    spec = TableSpec(
        name="emb",
        num_rows=0 if dynamic else rows,
        dim=DIM,
        shards=1,
        shard_index=0,
        dynamic=dynamic,
        capacity=case.get("capacity", 0),
    )
    if dynamic:  # a warm-up table, so that allocator pools and imports count in the base
        warm = DynamicTable(spec, OPTIMIZERS[opt])
        fill(warm, BATCH, BATCH, dynamic)
        del warm
    gc.collect()
    give_back_freed()
    base = status_kb("RssAnon")
    held: DynamicTable | FixedTable = (
        DynamicTable(spec, OPTIMIZERS[opt]) if dynamic else FixedTable(spec, OPTIMIZERS[opt], None)
    )
    seconds = fill(held, rows, case.get("distinct", rows), dynamic, case.get("batch", BATCH))
    gc.collect()
    give_back_freed()  # as the table does after a growth: what is left is the table's
    grown = (status_kb("RssAnon") - base) * 1024
    n = held.rows if isinstance(held, DynamicTable) else rows
    useful = n * 4 * (DIM + STATE_FLOATS[opt])
    figures = {
        **case,
        "rows_held": n,
        "rss_bytes_per_row": round(grown / n, 1),
        "ratio": round(grown / useful, 3),
        "nbytes_per_row": round(held.nbytes() / n, 1),
        "values_and_state_per_row": useful // n,
        "peak_over_end_mb": round((status_kb("VmHWM") - status_kb("VmRSS")) / 1024, 1),
        "fill_seconds": round(seconds, 1),
        **step_ms(held, rows, dynamic),
    }
    if case.get("checkpoint"):
        figures.update(checkpoints(held, rows))
    return figures


def cases(quick: bool) -> list[dict[str, Any]]:
    sizes = [1_000_000, 4_000_000] if quick else [1_000_000, 4_000_000, 12_000_000, 25_000_000]
    out: list[dict[str, Any]] = []
    for rows in sizes:
        for kind in ("dynamic", "fixed"):
            case = {"kind": kind, "rows": rows, "optimizer": "rowwise_adagrad"}
            out.append({**case, "checkpoint": True} if rows == sizes[-1] else case)
    for opt in ("sgd", "adagrad", "lazy_adam"):
        out.append({"kind": "dynamic", "rows": 4_000_000, "optimizer": opt})
    # a capacity's rows turn over at a training step's pace: a batch admitted, then evicted
    churn = {"capacity": 1_000_000, "distinct": 3_000_000, "batch": STEP_IDS}
    out.append({"kind": "dynamic", "rows": 1_000_000, "optimizer": "rowwise_adagrad", **churn})
    return out


def table_md(results: list[dict[str, Any]]) -> str:
    lines = [
        "| table | rows | optimizer | values + state B/row | RSS B/row | RSS ÷ values+state "
        "| counted B/row | peak - end MB | lookup / apply ms (8,192 ids) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kind = r["kind"] + (
            f", capacity {r['capacity']:,} of {r['distinct']:,} ids, {r['batch']:,} new a step"
            if r.get("capacity")
            else ""
        )
        lines.append(
            f"| {kind} | {r['rows_held']:,} | {r['optimizer']} | {r['values_and_state_per_row']}"
            f" | {r['rss_bytes_per_row']} | **{r['ratio']:.2f}x** | {r['nbytes_per_row']}"
            f" | {r['peak_over_end_mb']} | {r['lookup_ms']} / {r['apply_ms']} |"
        )
    lines += [
        "",
        "| table | rows | full checkpoint MB (s) | steps | rows in the delta | delta MB (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "delta_mb" in r:
            lines.append(
                f"| {r['kind']} | {r['rows_held']:,} | {r['full_checkpoint_mb']:,} "
                f"({r['full_checkpoint_s']}) | {r['delta_after_steps']} | {r['delta_rows']:,} "
                f"| {r['delta_mb']:,} ({r['delta_s']}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a case, run in this process
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        torch.set_num_threads(1)
        print(json.dumps(one(json.loads(args.one))))
        return
    results = []
    for case in cases(args.quick):
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(case)],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    print(table_md(results))


if __name__ == "__main__":
    main()
