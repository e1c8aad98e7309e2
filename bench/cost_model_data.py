"""What the cost model (``bench/cost_model.py``) is fitted to and checked against.

A ``Config`` describes one setup: how many workers and shards, where they run (``cores``:
all of them on this many shared cores; ``None``: one node per process), and what one worker
step moves and computes. A ``Measured`` is a config with the samples/s a benchmark got on it
and whether the fit may use it (``fit=False``: held out, only checked). Everything is read
from ``bench/results/*.json`` as the benchmarks wrote it; the two figures that no results
file holds are written down here with where they come from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CORES = 2.0  # this machine: every benchmark below ran all its processes on these two cores

# bench/durability.py prints a table and writes no JSON, so its run for this model is kept
# here: `nice -n 19 .venv/bin/python bench/durability.py --mb 8 --pushers 2 --seconds 5`,
# 2026-12-06, load average 2.0. One shard, 8 MiB pushes, pushes/s per setting.
DURABILITY_MIB = 8
DURABILITY_PUSHES_PER_S = {"memory": 102.0, "never": 67.4, "interval": 54.7, "always": 48.9}
# The digits MLP (64-128-10) forward and backward on a batch of 32 at one thread, median of
# 180 rounds, timed once beside this model (no results file has it): too small to matter.
DIGITS_COMPUTE_S = 0.16e-3
DIGITS_PARAMS = 9_610
DIGITS_TRAIN_ROWS = 1_437  # 4,311 samples over 3 epochs in scaling.json
DIGITS_PARTITIONS = 12  # the coordinator's default
SPARSE_TRAIN_ROWS, SPARSE_PARTITIONS = 262_144, 8  # bench/sparse.py


@dataclass(frozen=True)
class Config:
    """One setup. Bytes are per worker step, over all shards; ``push_bytes`` is the part
    pushed (and logged by the shards); ``rows`` the sparse rows looked up and pushed."""

    workers: int
    shards: int
    batch: int
    compute_s: float
    bytes_per_step: float
    push_bytes: float
    rows: float = 0.0
    rpcs_per_shard: int = 2  # pull + push; a hosted table adds a lookup
    steps_per_lease: float = math.inf  # inf: the coordinator's share is left out
    cores: float | None = CORES  # None: every process on its own node
    bandwidth: float = math.inf  # bytes/s per direction of one node's link
    shard_cores: float = 1.0  # cores one shard process can use (one interpreter)


@dataclass(frozen=True)
class Measured:
    name: str
    source: str
    config: Config
    samples_per_s: float
    fit: bool
    note: str = ""
    in_scope: bool = True  # False: the setup has costs the model has no term for


@dataclass(frozen=True)
class CoordinatorRun:
    """A coordinator_scale window: lease ops/s and the coordinator's CPU (cores) at N workers;
    ``saturated``: workers asked again at once (back to back), so the coordinator was the limit."""

    name: str
    workers: int
    leases_per_s: float
    cpu_cores: float
    saturated: bool


def _load(name: str, results: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / name).read_text())
    return data


def dense(params: float) -> tuple[float, float]:
    """(bytes per step, pushed bytes) for float32 parameters pulled whole and pushed whole."""
    return 8.0 * params, 4.0 * params


def scaling_steps(results: Path = RESULTS) -> list[Measured]:
    """The digits MLP, 1-4 workers x 1-4 shards: the 4-worker row is held out."""
    data = _load("scaling.json", results)
    moved, pushed = dense(DIGITS_PARAMS)
    lease = DIGITS_TRAIN_ROWS / DIGITS_PARTITIONS / data["model"]["batch_size"]
    out = []
    for row in data["rows"]:
        config = Config(
            row["workers"],
            row["shards"],
            data["model"]["batch_size"],
            DIGITS_COMPUTE_S,
            moved,
            pushed,
            steps_per_lease=lease,
        )
        name = f"digits {row['workers']}w x {row['shards']}s"
        out.append(Measured(name, "scaling.json", config, row["samples_per_s"], row["workers"] < 4))
    return out


# The first mlp5m run's two rows without overlap are fitted; every other row of the three
# files is held out. peers.json and peers_n2_repeat.json are left out: the shard's log and
# lock changed after them (docs/benchmarks.md, issue 17), so they measure other code.
PEERS_FILES = (
    "peers_overlap_mlp5m.json",
    "peers_overlap_mlp5m_repeat.json",
    "peers_overlap_deep6m.json",
)
PEERS_FIT = {
    ("peers_overlap_mlp5m.json", "pscluster async, no overlap"),
    ("peers_overlap_mlp5m.json", "pscluster sync, no overlap"),
}


def peers_steps(results: Path = RESULTS) -> list[Measured]:
    out = []
    for name in PEERS_FILES:
        data = _load(name, results)
        for row in data["rows"]:
            if row["system"] != "pscluster":
                continue
            spec = data["models"][row["model"]]
            bound = data["step_bounds"][f"{row['model']}/{row['processes']}"]
            moved, pushed = dense(row["params"])
            shards = 2 if "2 shards" in row["label"] else 1
            lease = 4311 / 3 / row["processes"] / spec["batch_size"]  # partitions = workers
            config = Config(
                row["processes"],
                shards,
                spec["batch_size"],
                bound["compute_ms"] / 1e3,
                moved,
                pushed,
                steps_per_lease=lease,
            )
            note = "overlap on" if "no overlap" not in row["label"] else ""
            if row["label"].startswith("pscluster sync"):
                note = ", ".join(filter(None, [note, "sync: barrier waits not modelled"]))
            label = f"{row['model']} {row['processes']}w x {shards}s, {row['label'][10:]}"
            fit = (name, row["label"]) in PEERS_FIT
            out.append(Measured(label, name, config, row["samples_per_s"], fit, note))
    return out


SPARSE_FILES = ("sparse.json", "sparse-1m.json", "sparse-10m.json", "sparse-dynamic.json")


def sparse_steps(results: Path = RESULTS) -> list[Measured]:
    """Hosted tables (rows) and the same model with the table dense; sparse.json's hosted 1M
    and 10M rows are fitted. The dense-table rows keep their table on Adam (two moments) and
    checkpoint after most pushes: the model has no term for either."""
    out = []
    for name in SPARSE_FILES:
        data = _load(name, results)
        args = data["args"]
        for row in data["rows"]:
            if row["variant"] not in ("hosted", "dense") or not row.get("compute_ms"):
                continue
            hosted = row["variant"] == "hosted"
            moved = row["table_bytes_per_step"] + row["dense_bytes_per_step"]
            pushed = row["table_bytes_pushed_per_step"] + row["dense_bytes_per_step"] / 2
            config = Config(
                args["workers"],
                args["shards"],
                data.get("batch_size", 1024),
                row["compute_ms"] / 1e3,
                moved,
                pushed,
                rows=row["rows_pushed_per_step"],
                rpcs_per_shard=3 if hosted else 2,
                steps_per_lease=SPARSE_TRAIN_ROWS / SPARSE_PARTITIONS / 1024,
            )
            label = f"sparse {row['rows'] // 1_000_000}M rows, {row['variant']} table"
            fit = name == "sparse.json" and hosted and row["rows"] < 50_000_000
            note = "" if hosted else "Adam on the table, checkpoints: not modelled"
            rate = row["steady_samples_per_s"]
            out.append(Measured(label, name, config, rate, fit, note, in_scope=hosted))
    return out


def all_steps(results: Path = RESULTS) -> list[Measured]:
    return scaling_steps(results) + peers_steps(results) + sparse_steps(results)


def coordinator_runs(results: Path = RESULTS) -> list[CoordinatorRun]:
    """The rewritten coordinator ("after"), back to back (saturated) and paced."""
    out = []
    for name in ("coordinator_scale-after.json", "coordinator_scale-paced.json"):
        data = _load(name, results)
        saturated = data["setup"]["task_seconds"] == 0
        for row in data["rows"]:
            if row["tree"] == "after":
                run = CoordinatorRun(
                    f"{name} {row['workers']} workers",
                    row["workers"],
                    row["figures"]["leases_per_s"],
                    row["cpu"]["coordinator_pct"] / 100,
                    saturated,
                )
                out.append(run)
    return out


def transport_seconds_per_byte(results: Path = RESULTS) -> float:
    """One client's Pull + Push of 64 MB through a memory-only shard: seconds per byte moved."""
    rate = float(_load("transport.json", results)["ps"]["median_mb_per_s"])
    return 1.0 / (rate * 1e6)


def wal_seconds_per_byte() -> float:
    """What the write-ahead log with an fsync per push adds per pushed byte (durability run)."""
    rate = DURABILITY_PUSHES_PER_S
    per_push = 1.0 / rate["always"] - 1.0 / rate["memory"]
    return per_push / (DURABILITY_MIB * (1 << 20))


def mlp5m_compute_s(results: Path = RESULTS) -> float:
    """One mlp5m batch (64) forward and backward at one thread, from the peers run."""
    bounds = _load("peers_overlap_mlp5m.json", results)["step_bounds"]["mlp5m/2"]
    return float(bounds["compute_ms"]) / 1e3


def sparse_step(rows: int = 10_000_000, results: Path = RESULTS) -> dict[str, Any]:
    """sparse.json's hosted row for a table of ``rows`` rows (what a step moves and computes)."""
    for row in _load("sparse.json", results)["rows"]:
        if row["variant"] == "hosted" and row["rows"] == rows:
            return dict(row)
    raise ValueError(f"sparse.json has no hosted row for {rows} table rows")


# --- The clusters of the issue, on paper: one node per process, 25 Gb/s full-duplex links.
LINK_25G = 25e9 / 8  # bytes/s per direction
STEPS_PER_LEASE = 100.0  # assumed: a lease long enough that leases are not the point
MLP5M_PARAMS, BIG_PARAMS = 5_787_402, 100_000_000


def _on_nodes(
    workers: int,
    shards: int,
    batch: int,
    compute_s: float,
    moved: float,
    pushed: float,
    rows: float = 0.0,
    rpcs: int = 2,
) -> Config:
    config = Config(workers, shards, batch, compute_s, moved, pushed, rows, rpcs)
    return replace(config, steps_per_lease=STEPS_PER_LEASE, cores=None, bandwidth=LINK_25G)


def prediction_configs(results: Path = RESULTS) -> dict[str, Config]:
    compute = mlp5m_compute_s(results)
    sparse = sparse_step(10_000_000, results)
    dense_part = sparse["dense_bytes_per_step"]
    moved = sparse["table_bytes_per_step"] + dense_part
    pushed = sparse["table_bytes_pushed_per_step"] + dense_part / 2
    rows, sparse_compute = sparse["rows_pushed_per_step"], sparse["compute_ms"] / 1e3
    return {
        "mlp5m, 64 workers x 16 shards": _on_nodes(64, 16, 64, compute, *dense(MLP5M_PARAMS)),
        "mlp5m, 64 x 16, compute free (accelerator)": _on_nodes(
            64, 16, 64, 0.0, *dense(MLP5M_PARAMS)
        ),
        # An MLP's forward and backward grow with its parameters at a fixed batch.
        "MLP 100M params, 64 x 16": _on_nodes(
            64, 16, 64, compute * BIG_PARAMS / MLP5M_PARAMS, *dense(BIG_PARAMS)
        ),
        "sparse, 10M-row table, 1,000 workers x 16 shards": _on_nodes(
            1000, 16, 1024, sparse_compute, moved, pushed, rows, 3
        ),
        "sparse, 10M-row table, 1,000 workers x 64 shards": _on_nodes(
            1000, 64, 1024, sparse_compute, moved, pushed, rows, 3
        ),
        # ps-lite's ratio in Li et al. 2014: 800 workers, 200 servers.
        "sparse, 10M-row table, 1,000 workers x 250 shards": _on_nodes(
            1000, 250, 1024, sparse_compute, moved, pushed, rows, 3
        ),
    }
