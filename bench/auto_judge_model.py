"""The noisy model of bench/auto_judge.py, shipped to the workers as this file (torch only):
an MLP with BatchNorm and dropout on the wine data's 13 features, 3 classes."""

from __future__ import annotations

import torch
from torch import nn


class NoisyWineNet(nn.Module):
    """13-h-3 with BatchNorm and dropout (h = 32: 550 parameters)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(13, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
