"""The model of bench/coordinator_scale.py's job, shipped as source: the smallest module the
SDK accepts. No worker ever builds it (the simulated workers train nothing); it only makes a
valid job whose leases the coordinator hands out."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out
