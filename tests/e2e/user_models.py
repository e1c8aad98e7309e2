"""Models people actually have, as they write them: BatchNorm, frozen layers and adapters,
regression heads, embedding bags. Each ships to the workers as this file's source."""

from __future__ import annotations

import math

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN with BatchNorm on digits as 1x8x8 images."""

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
        out: torch.Tensor = self.head(self.features(x))
        return out


class Regressor(nn.Module):
    """An MLP regression head (one output)."""

    def __init__(self, inputs: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.net(x))
        return out


class BagOfTokens(nn.Module):
    """Token ids (int64, fixed-length bags) through an EmbeddingBag to a class."""

    def __init__(self, vocab: int = 200, dim: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.out = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.bag(ids))
        return out


class FrozenStem(nn.Module):
    """A frozen first layer (a fixed feature extractor) under a trainable head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 64)
        for p in self.stem.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.stem(x)))
        return out


class LoRALinear(nn.Module):
    """A frozen Linear with a trainable low-rank update: W x + (B A) x * scale (Hu et al.)."""

    def __init__(self, inputs: int, outputs: int, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputs, inputs), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(outputs), requires_grad=False)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.lora_a = nn.Parameter(torch.randn(rank, inputs) / math.sqrt(inputs))
        self.lora_b = nn.Parameter(torch.zeros(outputs, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(x, self.weight, self.bias)
        return base + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


class DigitsMLP3(nn.Module):
    """The base model a LoRA fine-tune starts from (its layer names match LoRADigits)."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


class LoRADigits(nn.Module):
    """DigitsMLP3 with every layer frozen and low-rank adapters beside them."""

    def __init__(self, hidden: int = 256, rank: int = 4) -> None:
        super().__init__()
        self.fc1 = LoRALinear(64, hidden, rank)
        self.fc2 = LoRALinear(hidden, hidden, rank)
        self.fc3 = LoRALinear(hidden, 10, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


class Wide(nn.Module):
    """A linear classifier of wide rows (for jobs whose data, not model, is large)."""

    def __init__(self, inputs: int = 1000, classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out
