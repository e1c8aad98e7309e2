"""The larger model of the compression benchmark (shipped to workers as source): an MLP on
digits upsampled to 32x32, two 2048-wide hidden layers, ~6.3M parameters."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class WideNet(nn.Module):
    def __init__(self, inputs: int = 1024, hidden: int = 2048) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.reshape(x.shape[0], -1))
        return out


class DeepNet(nn.Module):
    """``layers`` hidden layers of ``hidden`` units: parameters spread over many layers (the
    opposite of WideNet, whose bytes sit in one), for bench/peers.py's overlap rows."""

    def __init__(self, inputs: int = 64, hidden: int = 1024, layers: int = 6) -> None:
        super().__init__()
        sizes = [inputs] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            body += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*body, nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.reshape(x.shape[0], -1))
        return out
