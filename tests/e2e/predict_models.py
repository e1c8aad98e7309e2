"""Models for the batch inference tests, as a user would write them in their own file."""

from __future__ import annotations

import time

import torch
from torch import nn


class PacedDigits(nn.Module):
    """The digits MLP, each forward pass taking ``pause`` seconds more: scoring takes long
    enough that a worker can be killed while it holds a partition."""

    def __init__(self, hidden: int = 64, pause: float = 0.0) -> None:
        super().__init__()
        self.pause = pause
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pause:
            time.sleep(self.pause)
        out: torch.Tensor = self.net(x)
        return out


class Picky(nn.Module):
    """Refuses inputs beyond [-100, 100]: a data-dependent failure the dry run's few rows
    need not meet, so it happens on a worker."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 100).any()):
            raise ValueError("an input is outside [-100, 100]: this model was not trained there")
        out: torch.Tensor = self.fc(x)
        return out
