"""The PyTorch DDP (gloo) side of bench/peers.py: the same model, batches and optimizer as a
pscluster job, trained by ``world`` spawned processes that all-reduce their gradients.

Each rank trains on partition ``rank`` of ``world`` with pscluster's own batch plan
(pscluster.data.partitions.batches: the same seed, the same permutation, the same batches a
pscluster worker trains on when the job has ``partitions = world``), steps a local
torch.optim.SGD with the job's settings (DDP averages gradients, as pscluster's sync mode
does), and rank 0 evaluates on the test set after every epoch while the others wait in their
next all-reduce, as pscluster's evaluations take time from training too. The clock starts
after the process group is up and the model wrapped (a pscluster job's clock starts once its
shards hold the parameters) and stops after the last epoch's evaluation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import start_processes
from torch.nn.parallel import DistributedDataParallel

from bench.common import rendezvous_port
from bench.peers_common import load_module
from pscluster.data.partitions import batches


@dataclass(frozen=True)
class DDPConfig:
    """What a DDP run trains: everything a spawned process needs, picklable."""

    model_file: str  # a .py file defining ``model_class``
    model_class: str
    model_kwargs: dict[str, Any]
    data_file: str  # a .py file whose ``load()`` returns ((X, y), (X_test, y_test))
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = int((model(x).argmax(dim=1) == y).sum())
    model.train()
    return correct / len(y)


def _rank_main(rank: int, world: int, port: int, cfg: DDPConfig, out: str) -> None:
    # Intra-op threads that together fit the cores, as LocalCluster gives its workers.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    try:
        (x_train, y_train), (x_test, y_test) = load_module(Path(cfg.data_file)).load()
        xs, ys = torch.from_numpy(np.asarray(x_train)), torch.from_numpy(np.asarray(y_train))
        xt, yt = torch.from_numpy(np.asarray(x_test)), torch.from_numpy(np.asarray(y_test))
        torch.manual_seed(cfg.seed)  # the same initial parameters as the pscluster job's
        model = getattr(load_module(Path(cfg.model_file)), cfg.model_class)(**cfg.model_kwargs)
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(
            ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        loss_fn = nn.CrossEntropyLoss()
        n = len(xs)
        step_times: list[float] = []
        step_samples: list[int] = []
        curve: list[list[float]] = []
        samples = 0
        dist.barrier()
        t0 = time.time()
        for epoch in range(cfg.epochs):
            plan = batches(n, world, rank, epoch, cfg.batch_size, cfg.seed)
            with ddp.join():  # partitions may differ by a batch: uneven inputs are allowed
                for idx in plan:
                    i = torch.from_numpy(idx)
                    opt.zero_grad(set_to_none=True)
                    loss_fn(ddp(xs[i]), ys[i]).backward()
                    opt.step()
                    samples += len(idx)
                    step_times.append(time.time())
                    step_samples.append(len(idx) * world)
            if rank == 0:
                curve.append([round(time.time() - t0, 3), _accuracy(model, xt, yt)])
        dist.barrier()
        wall = time.time() - t0
        total = torch.tensor([samples], dtype=torch.int64)
        dist.all_reduce(total)
        if rank == 0:
            result = {
                "samples": int(total.item()),
                "wall_s": wall,
                "curve": curve,
                "step_times": [t - t0 for t in step_times],
                "step_samples": step_samples,
                "params": sum(p.numel() for p in model.parameters()),
            }
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_ddp(cfg: DDPConfig, world: int, out: Path, timeout: float = 900.0) -> dict[str, Any]:
    """Spawn ``world`` processes, train, and return rank 0's record (samples, wall_s, curve,
    step_times, step_samples, params). Raises RuntimeError if they fail or outlast
    ``timeout`` seconds (they are killed)."""
    if world < 1:
        raise ValueError(f"world must be at least 1, got {world}")
    out.unlink(missing_ok=True)
    ctx = start_processes(  # type: ignore[no-untyped-call]
        _rank_main,
        args=(world, rendezvous_port(), cfg, str(out)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise RuntimeError(f"DDP with {world} processes did not finish within {timeout}s")
    record: dict[str, Any] = json.loads(out.read_text())
    record["config"] = asdict(cfg)
    return record
