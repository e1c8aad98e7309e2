"""Models as a user would write them, in their own file; the cluster receives this source."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class NeedsLocalFile(nn.Module):
    """Builds on the submitter's machine but not on a worker: it reads a file next to it."""

    def __init__(self) -> None:
        super().__init__()
        classes = (Path(__file__).parent / "classes.txt").read_text().split()
        self.fc = nn.Linear(64, len(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


class FailsOnWorkers(nn.Module):
    """Builds where the job is submitted, not on the workers: their machines lack something
    (here, told by an environment variable only the workers have)."""

    def __init__(self) -> None:
        super().__init__()
        if os.environ.get("PSC_TEST_BROKEN_MACHINE"):
            raise RuntimeError("libcuda.so.1: cannot open shared object file")
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out
