"""A cost model of a training step: fitted to this machine's measurements, checked on points
the fit did not see, then used on paper for clusters this machine cannot run.

A worker step costs a fixed part, a part per RPC (each shard gets a pull and a push, and a
lookup for a hosted table), a part per byte moved, a part per sparse row, and the
coordinator's share of its lease; each has a latency face (what one worker waits) and a CPU
face (what the processes burn). Samples/s is the lowest of the rates the resources allow:
the workers' own (N / latency), the shared cores (on this machine), each shard's core, each
shard's link, the coordinator. docs/scaling.md has the formulas, the constants and what was
assumed.

    .venv/bin/python bench/cost_model.py    # writes bench/results/cost_model.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cost_model_data as data  # noqa: E402
from bench.cost_model_data import Config, CoordinatorRun, Measured  # noqa: E402

OUT = data.RESULTS / "cost_model.json"
STEP_TERMS = (
    "step_latency_s",
    "rpc_latency_s",
    "step_cpu_s",
    "rpc_cpu_s",
    "byte_cpu_s",
    "row_cpu_s",
)


@dataclass(frozen=True)
class Constants:
    step_latency_s: float  # e_L: a step's fixed wait (loop, batch, reports, lease turnover)
    rpc_latency_s: float  # a_L: one RPC to one shard, both ends and the hand-offs between
    byte_latency_s: float  # b_L: per byte pulled or pushed by one stream (transport.json)
    wal_latency_s: float  # w: per byte pushed, the log's write and fsync (durability run)
    step_cpu_s: float  # e_C: a step's fixed CPU, all processes together
    rpc_cpu_s: float  # a_C: one RPC's CPU, both ends together
    byte_cpu_s: float  # b_C: CPU per byte moved, both ends (framing, copies, log, optimizer)
    row_cpu_s: float  # rho: per sparse row, both ends (gather, scatter, rowwise optimizer, log)
    lease_cpu_s: float  # c_l: coordinator CPU per lease (acquire, report, complete)
    member_cpu_s: float  # c_n: coordinator CPU per worker per second (heartbeats, polls)
    coordinator_cores: float  # K: the most the coordinator process gets through


def step_latency(k: Constants, c: Config) -> float:
    """One worker's step with nothing else competing: the RPCs to the shards are issued and
    answered one after another by the worker's interpreter; bytes stream at the slower of the
    software and the link; each shard logs its share of the push."""
    per_byte = max(k.byte_latency_s, 1.0 / c.bandwidth)
    return (
        c.compute_s
        + k.step_latency_s
        + c.rpcs_per_shard * c.shards * k.rpc_latency_s
        + c.bytes_per_step * per_byte
        + c.push_bytes / c.shards * k.wal_latency_s
        + c.rows * k.row_cpu_s
    )


def worker_cpu(k: Constants, c: Config) -> float:
    """A worker's CPU per step: compute, the fixed part, its end (half) of RPCs, bytes, rows."""
    ends = c.rpcs_per_shard * c.shards * k.rpc_cpu_s + c.bytes_per_step * k.byte_cpu_s
    return c.compute_s + k.step_cpu_s + (ends + c.rows * k.row_cpu_s) / 2


def shard_cpu(k: Constants, c: Config) -> float:
    """One shard's CPU per worker step: every step reaches every shard (its RPCs), the bytes
    and rows are split evenly over the shards, and the shard does its end (half) of each."""
    return (
        c.rpcs_per_shard * k.rpc_cpu_s
        + (c.bytes_per_step * k.byte_cpu_s + c.rows * k.row_cpu_s) / c.shards
    ) / 2


def total_cpu(k: Constants, c: Config) -> float:
    """CPU per step of every process together: the worker, every shard, the coordinator."""
    return worker_cpu(k, c) + c.shards * shard_cpu(k, c) + k.lease_cpu_s / c.steps_per_lease


def bounds(k: Constants, c: Config) -> dict[str, float]:
    """Steps per second, all workers together, that each resource allows."""
    out = {"workers": c.workers / step_latency(k, c)}
    if c.cores is not None:
        spare_cores = max(0.0, c.cores - c.workers * k.member_cpu_s)
        out["shared cores"] = spare_cores / total_cpu(k, c)
    else:
        out["shard CPU"] = c.shard_cores / shard_cpu(k, c)
        per_direction = max(c.push_bytes, c.bytes_per_step - c.push_bytes) / c.shards
        out["shard link"] = c.bandwidth / per_direction
    if math.isfinite(c.steps_per_lease):
        spare = max(0.0, k.coordinator_cores - c.workers * k.member_cpu_s)
        out["coordinator"] = spare * c.steps_per_lease / k.lease_cpu_s
    return out


def throughput(k: Constants, c: Config) -> tuple[float, str]:
    """Samples per second and the resource that sets it."""
    rates = bounds(k, c)
    name = min(rates, key=rates.__getitem__)
    return rates[name] * c.batch, name


def saturation_workers(k: Constants, c: Config) -> dict[str, float]:
    """For each resource but the workers, the worker count at which it is used up: where its
    bound meets the workers' own rate, N / latency."""
    latency = step_latency(k, c)
    out = {}
    for name, rate in bounds(k, c).items():
        if name == "coordinator":
            per_worker = k.lease_cpu_s / (c.steps_per_lease * latency) + k.member_cpu_s
            out[name] = k.coordinator_cores / per_worker
        elif name == "shared cores" and c.cores is not None:
            out[name] = c.cores / (total_cpu(k, c) / latency + k.member_cpu_s)
        elif name != "workers":
            out[name] = rate * latency
    return out


def first_bottleneck(k: Constants, c: Config) -> tuple[str, float]:
    """The resource that saturates first as workers are added, and at how many workers."""
    at = saturation_workers(k, c)
    name = min(at, key=at.__getitem__)
    return name, at[name]


def _row(c: Config, regime: str, k: Constants) -> tuple[np.ndarray, float]:
    """A point's coefficients on STEP_TERMS and what the known constants add, as parts of the
    cluster's period per step: latency / N (workers bound) or CPU / cores (shared cores)."""
    if regime == "workers":
        x = [1.0, c.rpcs_per_shard * c.shards, 0.0, 0.0, 0.0, c.rows]
        known = (
            c.compute_s
            + c.bytes_per_step * max(k.byte_latency_s, 1.0 / c.bandwidth)
            + c.push_bytes / c.shards * k.wal_latency_s
        )
        scale = 1.0 / c.workers
    else:
        x = [0.0, 0.0, 1.0, c.rpcs_per_shard * c.shards, c.bytes_per_step, c.rows]
        known = c.compute_s + k.lease_cpu_s / c.steps_per_lease
        scale = 1.0 / ((c.cores or data.CORES) - c.workers * k.member_cpu_s)
    return np.array(x) * scale, known * scale


def _regime(k: Constants, c: Config) -> str:
    rates = bounds(k, c)
    return "workers" if rates["workers"] <= rates.get("shared cores", math.inf) else "shared cores"


def fit_steps(points: Sequence[Measured], known: Constants) -> tuple[Constants, dict[str, float]]:
    """Least squares of the six STEP_TERMS on the points' periods (each relative to its own
    size). Which bound a point sits on is decided by the previous round's constants, starting
    from 'one worker: its latency; more: the shared cores', until no point changes side."""
    regimes = ["workers" if p.config.workers == 1 else "shared cores" for p in points]
    for _ in range(20):
        rows, targets = [], []
        for p, regime in zip(points, regimes, strict=True):
            x, rest = _row(p.config, regime, known)
            period = p.config.batch / p.samples_per_s
            rows.append(x / period)
            targets.append((period - rest) / period)
        a, y = np.array(rows), np.array(targets)
        theta = np.linalg.lstsq(a, y, rcond=None)[0]
        fitted = replace(known, **dict(zip(STEP_TERMS, map(float, theta), strict=True)))
        changed = [_regime(fitted, p.config) for p in points]
        if changed == regimes:
            break
        regimes = changed
    residual = a @ theta - y
    variance = float(residual @ residual) / max(1, len(y) - len(theta))
    stderr = np.sqrt(np.diag(variance * np.linalg.pinv(a.T @ a)))
    return fitted, dict(zip(STEP_TERMS, map(float, stderr), strict=True))


def fit_coordinator(runs: Sequence[CoordinatorRun]) -> tuple[float, float, float]:
    """(c_l, c_n, K) from the saturated runs: CPU = c_l x leases/s + c_n x workers, relative
    least squares; K is the CPU the coordinator reached there (its ceiling)."""
    full = [r for r in runs if r.saturated]
    cpu = np.array([r.cpu_cores for r in full])
    a = np.array([[r.leases_per_s, r.workers] for r in full]) / cpu[:, None]
    lease, member = np.linalg.lstsq(a, np.ones(len(full)), rcond=None)[0]
    return float(lease), float(member), float(cpu.mean())


def fit(
    points: Sequence[Measured],
    runs: Sequence[CoordinatorRun],
    byte_latency: float,
    wal_latency: float,
) -> tuple[Constants, dict[str, float]]:
    lease, member, ceiling = fit_coordinator(runs)
    start = Constants(
        0.0, 0.0, byte_latency, wal_latency, 0.0, 0.0, 0.0, 0.0, lease, member, ceiling
    )
    return fit_steps([p for p in points if p.fit], start)


def check(k: Constants, points: Sequence[Measured]) -> list[dict[str, Any]]:
    out = []
    for p in points:
        predicted, binding = throughput(k, p.config)
        error = 100.0 * (predicted / p.samples_per_s - 1.0)
        out.append(
            {
                "name": p.name,
                "source": p.source,
                "fit": p.fit,
                "measured": p.samples_per_s,
                "predicted": round(predicted, 1),
                "error_pct": round(error, 1),
                "binding": binding,
                "in_scope": p.in_scope,
                "note": p.note,
            }
        )
    return out


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    errors = [abs(r["error_pct"]) for r in rows]
    return {
        "points": len(errors),
        "median_abs_error_pct": round(statistics.median(errors), 1),
        "max_abs_error_pct": round(max(errors), 1),
    }


def best_shards(
    k: Constants, c: Config, options: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
) -> tuple[int, float]:
    """The shard count (of ``options``) with the most samples/s for this job and cluster."""
    rates = {s: throughput(k, replace(c, shards=s))[0] for s in options}
    best = max(rates, key=rates.__getitem__)
    return best, rates[best]


def predict(k: Constants, c: Config) -> dict[str, Any]:
    rate, binding = throughput(k, c)
    first, at = first_bottleneck(k, c)
    shards, best = best_shards(k, c)
    ideal = c.workers * c.batch / c.compute_s if c.compute_s else None
    return {
        "samples_per_s": round(rate),
        "binding": binding,
        "first_bottleneck": first,
        "saturates_at_workers": round(at, 1),
        "step_latency_ms": round(1e3 * step_latency(k, c), 1),
        "shard_cpu_ms_per_worker_step": round(1e3 * shard_cpu(k, c), 2),
        "bounds_samples_per_s": {n: round(r * c.batch) for n, r in bounds(k, c).items()},
        "saturation_workers": {n: round(v, 1) for n, v in saturation_workers(k, c).items()},
        "compute_only_samples_per_s": round(ideal) if ideal else None,
        "best_shards": shards,
        "best_shards_samples_per_s": round(best),
    }


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main() -> None:
    points, runs = data.all_steps(), data.coordinator_runs()
    k, stderr = fit(points, runs, data.transport_seconds_per_byte(), data.wal_seconds_per_byte())
    rows = check(k, points)
    coordinator = [
        {
            "name": r.name,
            "saturated": r.saturated,
            "cpu_cores": r.cpu_cores,
            "predicted_cpu_cores": round(
                k.lease_cpu_s * r.leases_per_s + k.member_cpu_s * r.workers, 3
            ),
        }
        for r in runs
    ]
    predictions = {}
    for label, config in data.prediction_configs().items():
        predictions[label] = predict(k, config)
        predictions[label]["config"] = {n: _finite(v) for n, v in asdict(config).items()}
    report = {
        "command": "python bench/cost_model.py",
        "constants": asdict(k),
        "stderr": stderr,
        "fit": summary([r for r in rows if r["fit"]]),
        "held_out": summary([r for r in rows if not r["fit"] and r["in_scope"]]),
        "held_out_out_of_scope": summary([r for r in rows if not r["in_scope"]]),
        "checks": rows,
        "coordinator": coordinator,
        # Heartbeats and polls alone use the coordinator up at this many workers, whatever the job.
        "coordinator_members_ceiling_workers": round(k.coordinator_cores / k.member_cpu_s),
        "predictions": predictions,
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    for name, value in asdict(k).items():
        spread = f" +- {stderr[name]:.3g}" if name in stderr else ""
        print(f"{name:18} {value:.4g}{spread}")
    print("\n| point | source | fit? | measured | predicted | error | bound | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['source']} | {'fit' if r['fit'] else 'held out'} | "
            f"{r['measured']:,.0f} | {r['predicted']:,.0f} | {r['error_pct']:+.1f}% | "
            f"{r['binding']} | {r['note']} |"
        )
    print(f"\nfit: {report['fit']}\nheld out: {report['held_out']}")
    for r in coordinator:
        print(f"coordinator {r['name']}: {r['cpu_cores']} cores, model {r['predicted_cpu_cores']}")
    for label, p in predictions.items():
        print(
            f"\n{label}: {p['samples_per_s']:,} samples/s ({p['binding']}); first bottleneck "
            f"{p['first_bottleneck']} at {p['saturates_at_workers']} workers; "
            f"bounds {p['bounds_samples_per_s']}; best shards {p['best_shards']} "
            f"({p['best_shards_samples_per_s']:,}/s); latency {p['step_latency_ms']} ms"
        )
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
