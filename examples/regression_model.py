"""The model of the regression example: a small MLP with one output, trained with mse.

This file travels to the workers as source, so it holds only what building the model needs.
"""

from __future__ import annotations

import torch
from torch import nn


class Regressor(nn.Module):
    """``inputs`` features -> two ``hidden``-wide tanh layers -> one value.

    tanh rather than ReLU: with 353 training rows a small, smooth model overfits less
    abruptly, and no unit dies on standardised inputs.
    """

    def __init__(self, inputs: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
