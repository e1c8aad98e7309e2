"""bench/cost_model.py: the fit finds constants it was given back, and the model's bounds
behave as its formulas say. Pure functions only: nothing is timed, no cluster is started."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from bench import cost_model as cm
from bench import cost_model_data as data
from bench.cost_model_data import Config, CoordinatorRun, Measured

# Near what this machine gave, so that the synthetic points sit on the same bounds as the
# measured ones (one worker on its own latency, more workers on the shared cores).
TRUTH = cm.Constants(
    step_latency_s=9e-3,
    rpc_latency_s=3e-3,
    byte_latency_s=1.5e-9,
    wal_latency_s=1.3e-9,
    step_cpu_s=8e-3,
    rpc_cpu_s=3.7e-3,
    byte_cpu_s=3e-9,
    row_cpu_s=1.7e-6,
    lease_cpu_s=2.5e-3,
    member_cpu_s=0.8e-3,
    coordinator_cores=1.1,
)


def synthetic_points(k: cm.Constants) -> list[Measured]:
    """Digits-, mlp5m- and sparse-like steps on 2 shared cores, rated by the model itself."""
    jobs = [  # batch, compute, bytes, pushed, rows, rpcs per shard
        (32, 0.2e-3, 8 * 9_610, 4 * 9_610, 0.0, 2),
        (64, 29e-3, 8 * 5.8e6, 4 * 5.8e6, 0.0, 2),
        (1024, 6e-3, 0.9e6, 0.45e6, 5_000.0, 3),
    ]
    out = []
    for batch, compute, moved, pushed, rows, rpcs in jobs:
        for workers in (1, 4):
            for shards in (1, 2, 4):
                config = Config(workers, shards, batch, compute, moved, pushed, rows, rpcs, 10.0)
                rate = cm.throughput(k, config)[0]
                out.append(Measured(f"{workers}x{shards}", "synthetic", config, rate, True))
    return out


def distributed(bandwidth: float = data.LINK_25G, workers: int = 64) -> Config:
    moved, pushed = data.dense(5.8e6)
    return Config(workers, 16, 64, 29e-3, moved, pushed, cores=None, bandwidth=bandwidth)


def test_fit_recovers_the_constants_that_made_the_points() -> None:
    # Prepare
    points = synthetic_points(TRUTH)
    start = replace(TRUTH, **{name: 0.0 for name in cm.STEP_TERMS})

    # Execute
    fitted, stderr = cm.fit_steps(points, start)

    # Assert
    for name in cm.STEP_TERMS:
        assert getattr(fitted, name) == pytest.approx(getattr(TRUTH, name), rel=1e-6), name
        assert stderr[name] == pytest.approx(0.0, abs=1e-9)
    regimes = {cm.throughput(fitted, p.config)[1] for p in points}
    assert regimes == {"workers", "shared cores"}  # both faces of the model were fitted


def test_fit_coordinator_recovers_lease_and_member_costs() -> None:
    # Prepare
    runs = [
        CoordinatorRun(str(n), n, leases, 2.5e-3 * leases + 0.8e-3 * n, saturated=True)
        for n, leases in ((50, 440.0), (200, 350.0), (500, 290.0))
    ]

    # Execute
    lease, member, ceiling = cm.fit_coordinator(runs)

    # Assert
    assert lease == pytest.approx(2.5e-3, rel=1e-9)
    assert member == pytest.approx(0.8e-3, rel=1e-9)
    assert ceiling == pytest.approx(np.mean([r.cpu_cores for r in runs]))


def test_samples_per_second_never_fall_as_bandwidth_grows() -> None:
    # Prepare
    bandwidths = np.logspace(6, 12, 61)  # 1 MB/s to 1 TB/s per direction

    # Execute
    rates = [cm.throughput(TRUTH, distributed(float(b)))[0] for b in bandwidths]

    # Assert
    assert all(later >= earlier for earlier, later in itertools.pairwise(rates))
    assert rates[0] < rates[-1]


def test_first_bottleneck_switches_from_link_to_shard_cpu_where_the_bounds_cross() -> None:
    # Prepare: the shard link's bound, bandwidth x shards / bytes per direction, equals the
    # shard CPU's, cores / CPU per worker step, at this bandwidth.
    config = distributed()
    per_direction = max(config.push_bytes, config.bytes_per_step - config.push_bytes)
    crossing = config.shard_cores * per_direction / (config.shards * cm.shard_cpu(TRUTH, config))

    # Execute
    below = cm.first_bottleneck(TRUTH, replace(config, bandwidth=0.99 * crossing))
    above = cm.first_bottleneck(TRUTH, replace(config, bandwidth=1.01 * crossing))

    # Assert
    assert below[0] == "shard link"
    assert above[0] == "shard CPU"


def test_saturation_is_where_a_bound_meets_the_workers_own_rate() -> None:
    # Prepare
    config = replace(distributed(), steps_per_lease=1.0)

    # Execute
    at = cm.saturation_workers(TRUTH, config)

    # Assert
    for name, workers in at.items():
        rates = cm.bounds(TRUTH, replace(config, workers=round(workers)))
        assert rates["workers"] == pytest.approx(rates[name], rel=0.05), name


def test_one_worker_waits_on_itself_and_many_share_the_cores() -> None:
    # Prepare
    one = Config(1, 1, 32, 0.2e-3, 8 * 9_610, 4 * 9_610)

    # Execute
    alone = cm.throughput(TRUTH, one)
    crowd = cm.throughput(TRUTH, replace(one, workers=8))

    # Assert
    assert alone[1] == "workers"
    assert crowd[1] == "shared cores"
    assert crowd[0] < 8 * alone[0]


def test_no_link_bound_on_loopback_and_no_coordinator_bound_without_leases() -> None:
    # Execute
    rates = cm.bounds(TRUTH, replace(distributed(), bandwidth=math.inf))

    # Assert
    assert rates["shard link"] == math.inf
    assert "coordinator" not in rates


def test_the_results_files_load_and_fit() -> None:
    # Prepare
    points, runs = data.all_steps(), data.coordinator_runs()

    # Execute
    fitted, _ = cm.fit(points, runs, data.transport_seconds_per_byte(), data.wal_seconds_per_byte())

    # Assert
    assert sum(p.fit for p in points) > len(cm.STEP_TERMS)
    assert any(not p.fit for p in points)
    assert all(math.isfinite(v) for v in vars(fitted).values())
    assert set(data.prediction_configs()) and all(r.workers > 0 for r in runs)
