"""The model of the BatchNorm CNN example: digits as 1x8x8 images, two conv blocks.

This file travels to the workers as source. BatchNorm's running mean and variance are buffers,
not parameters: the workers send how a batch moved them and the shards keep them beside the
weights, so the model you fetch carries the statistics its reported accuracy was measured with.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU -> pool, twice, then a linear layer to 10 logits.

    ``channels`` sets the width: 16 (about 6k parameters) for the example; the precision
    benchmark also trains a wider one, where the convolutions are enough work for bf16 to show.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x.reshape(x.shape[0], 1, 8, 8)))
        return out
