"""The models of bench/distill.py, shipped to the workers as this file (torch only): a digits
teacher with two wide hidden layers, and students of one narrow hidden layer."""

from __future__ import annotations

import torch
from torch import nn


class Teacher(nn.Module):
    """64-H-H-10 (H = 256: 85,002 parameters)."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


class Student(nn.Module):
    """64-h-10 (h = 16: 1,210 parameters; h = 32: 2,410)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out
