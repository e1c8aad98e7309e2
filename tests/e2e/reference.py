"""The same model trained in one process, on the batches a one-worker job trains on.

A job with one worker leases the partitions of each epoch in order, and every batch is a
pure function of (seed, epoch, partition), so this loop sees exactly the job's batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pscluster.data.partitions import batches


def train_one_process(
    model_cls: type[nn.Module],
    train: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    partitions: int,
    seed: int,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(**(model_kwargs or {}))
    opt = optimizer([p for p in model.parameters() if p.requires_grad])
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    model.train()
    for epoch in range(epochs):
        for partition in range(partitions):
            for idx in batches(len(x), partitions, partition, epoch, batch_size, seed):
                opt.zero_grad()
                loss(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
                opt.step()
    return model
