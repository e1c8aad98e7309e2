"""The model of the digits example: a small MLP on scikit-learn's 8x8 digit images.

This file travels to the workers as source (pscluster never pickles code), so it holds only
what building the model needs.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    """64 pixel intensities -> ``hidden`` ReLU units -> 10 digit logits."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.reshape(x.shape[0], -1))
        return out
