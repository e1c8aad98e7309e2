"""The model the compression tests train, in a user's file: digits through two hidden layers
wide enough (300k parameters, 1.2 MB) that its size on disk is its weights."""

from __future__ import annotations

import torch
from torch import nn


class WideDigits(nn.Module):
    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


class SkipDigits(nn.Module):
    """A skip connection around its hidden layer: structured pruning cannot slice it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(x)) + x)
        return out
