"""The model of bench/inference.py, shipped to the workers as this file (torch only): an MLP
with enough arithmetic per row (1.16M multiply-adds) that scoring, not moving rows, is what a
worker spends its time on."""

from __future__ import annotations

import torch
from torch import nn


class ScoringMLP(nn.Module):
    def __init__(self, features: int = 128, hidden: int = 1024, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
