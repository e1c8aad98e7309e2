"""What bench/finetune.py and bench/precision.py share: a job on the cluster and the same
training in one plain PyTorch process, measured the same way and reported as the same row.

The one-process run is the baseline the cluster's figures are ratios against. It builds the
model under the job's seed (as the SDK does), loads ``init_from`` by name, and trains on
exactly the job's batches (pscluster.data.partitions.batches: every partition of every epoch
in order, as a one-worker job leases them), with a local torch.optim optimizer of the job's
settings, in the job's precision (bf16: CPU autocast around forward and loss, as a worker
does), and evaluates in fp32 after every epoch, as the job does. Its step count is not the
job's: a sync job with W workers averages W batches into one update. It runs with a worker's
intra-op threads (cores // workers, as LocalCluster gives its workers), so it is what one
worker's compute would be without the cluster: W workers that lost nothing to the cluster
would reach W times its samples/s.

:func:`interleaved` runs each setting's one-process run right before its cluster job, repeat
after repeat (the cluster idles meanwhile; its processes only heartbeat), so that load from
other work, which drifts over minutes on a shared machine, hits both sides alike; a row is
the median of its repeats, every run kept under ``runs``.

Two rates per row, both in training samples per second:

- ``samples_per_s``: all samples over the whole run (job: its start to its finish, so the
  coordinator's scheduling, the first pull and every evaluation count);
- ``steady_samples_per_s``: samples over the span between the first and the last step report
  (the first step's samples left out, since the span starts when it ended): the training
  itself, evaluations between epochs included, start-up and the final evaluation not.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.peers_common import steady_rate
from pscluster.client.local import LocalCluster
from pscluster.data.partitions import batches
from pscluster.model_compression.measure import intra_op_threads

Arrays = tuple[np.ndarray, np.ndarray]
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def make_optimizer(params: list[nn.Parameter], spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The torch.optim optimizer a job's ``optimizer`` dict names (sgd, adam, adamw)."""
    name = spec.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} has no baseline; expected one of {list(OPTIMIZERS)}")
    options = {k: v for k, v in spec.items() if k != "name"}
    opt: torch.optim.Optimizer = OPTIMIZERS[name](params, **options)
    return opt


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    if precision == "fp32":
        yield
    elif precision == "bf16":
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            yield
    else:
        raise ValueError(f"precision {precision!r} has no CPU baseline; expected fp32 or bf16")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = int((model(x).argmax(dim=1) == y).sum())
    model.train()
    return correct / len(y)


def build(
    model: type[nn.Module],
    kwargs: Mapping[str, Any],
    seed: int,
    init_from: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The job's initial model: constructed under its seed, ``init_from`` loaded by name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        instance = model(**kwargs)
    if init_from is not None:
        instance.load_state_dict(dict(init_from), strict=False)
    return instance


def tensors(pair: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.asarray(pair[0])), torch.from_numpy(np.asarray(pair[1]))


def one_process(job: Mapping[str, Any]) -> tuple[dict[str, Any], nn.Module]:
    """Train ``job`` (Client.submit's keyword arguments) in this process; return its row and
    the trained model."""
    model = build(job["model"], job.get("model_kwargs") or {}, job["seed"], job.get("init_from"))
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], job["optimizer"])
    (x, y), (xt, yt) = tensors(job["train"]), tensors(job["test"])
    precision, parts = job.get("precision", "fp32"), job["partitions"]
    step_times: list[float] = []
    step_samples: list[int] = []
    curve: list[list[float]] = []
    model.train()
    start = time.time()
    for epoch in range(job["epochs"]):
        for partition in range(parts):
            plan = batches(len(x), parts, partition, epoch, job["batch_size"], job["seed"])
            for idx in plan:
                i = torch.from_numpy(idx)
                opt.zero_grad(set_to_none=True)
                with autocast(precision):
                    loss = F.cross_entropy(model(x[i]), y[i])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                step_times.append(time.time() - start)
                step_samples.append(len(idx))
        curve.append([round(time.time() - start, 3), accuracy(model, xt, yt)])
    wall = time.time() - start
    done = row(
        "one process",
        samples=sum(step_samples),
        wall=wall,
        steady=steady_rate(step_times, step_samples),
        curve=curve,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    return done, model


def on_cluster(cluster: LocalCluster, job: Mapping[str, Any]) -> dict[str, Any]:
    """Submit ``job``, wait for it, and return its row with bytes per step and worker timings."""
    with cluster.client() as client:
        handle = client.submit(**job)
        info = handle.wait(timeout=1800)
        m = handle.metrics()
    if info.started_unix is None or info.finished_unix is None:
        raise RuntimeError(f"job {handle.id} completed without start and finish times: {info}")
    started = info.started_unix
    steps = max(1, len(m.steps))
    return row(
        "pscluster",
        samples=sum(s.samples for s in m.steps),
        wall=info.finished_unix - started,
        steady=steady_rate([s.unix_time - started for s in m.steps], [s.samples for s in m.steps]),
        curve=[[round(e.unix_time - started, 3), round(e.test_accuracy, 4)] for e in m.epochs],
        trainable=info.num_params,
        job_id=handle.id,
        steps=len(m.steps),
        pushes_applied=m.pushes_applied,
        bytes_pushed=m.bytes_pushed,
        bytes_pulled=m.bytes_pulled,
        bytes_pushed_per_step=round(m.bytes_pushed / steps),
        bytes_pulled_per_step=round(m.bytes_pulled / steps),
        # EWMA per batch as the coordinator last saw them: wall time, and wall time less the
        # waits on other workers (sync barriers): what a batch costs a worker itself.
        worker_step_s=[round(w.step_seconds, 4) for w in m.workers],
        worker_busy_s=[round(w.busy_seconds, 4) for w in m.workers],
    )


def row(
    system: str,
    *,
    samples: int,
    wall: float,
    steady: float | None,
    curve: list[list[float]],
    trainable: int,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "system": system,
        "samples": samples,
        "wall_s": round(wall, 3),
        "samples_per_s": round(samples / wall, 1) if wall > 0 else None,
        "steady_samples_per_s": round(steady, 1) if steady else None,
        "final_accuracy": curve[-1][1] if curve else None,
        "trainable_params": trainable,
        "curve": curve,
        **extra,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeats: rates, times and accuracy are medians; every run is in ``runs``."""
    out = {k: v for k, v in runs[-1].items() if k != "curve"}
    for key in ("wall_s", "samples_per_s", "steady_samples_per_s", "final_accuracy"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 4) if values else None
    out["runs"] = runs
    return out


Labelled = list[tuple[dict[str, Any], dict[str, Any]]]


def interleaved(
    jobs: Labelled, *, workers: int, repeats: int, env: Mapping[str, str]
) -> list[dict[str, Any]]:
    """For each (labels, job): a one-process row and a cluster row (2 shards, ``workers``
    workers, ``env`` for every process), each the median of ``repeats`` runs, run in turn."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    alone: list[list[dict[str, Any]]] = [[] for _ in jobs]
    clustered: list[list[dict[str, Any]]] = [[] for _ in jobs]
    with (
        tempfile.TemporaryDirectory() as state,
        LocalCluster(shards=2, workers=workers, state_dir=state, env=dict(env)) as cluster,
    ):
        cluster.wait_for_workers(workers, timeout=120)
        for _ in range(repeats):
            for k, (labels, job) in enumerate(jobs):
                with intra_op_threads(threads):
                    alone[k].append(one_process(job)[0])
                clustered[k].append(on_cluster(cluster, job))
                for r in (alone[k][-1], clustered[k][-1]):
                    brief = {key: value for key, value in r.items() if key != "curve"}
                    print(json.dumps({**labels, **brief}), flush=True)
    rows = []
    for k, (labels, _) in enumerate(jobs):
        rows.append({**labels, **median_of(alone[k]), "threads": threads})
        rows.append({**labels, **median_of(clustered[k])})
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
