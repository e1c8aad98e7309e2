"""The model of bench/compress.py, shipped to the workers as this file (torch only): digits
through two hidden layers of 1024 (1.13M parameters, 4.5 MB in float32), wide enough that
what a compressed file saves is weights, not the format's overhead."""

from __future__ import annotations

import torch
from torch import nn


class WideDigits(nn.Module):
    def __init__(self, hidden: int = 1024) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out
