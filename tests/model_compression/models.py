"""Models the compression tests prune and slice, as users write them: an MLP through
nn.Sequential, a CNN with BatchNorm, pooling and a flatten, and two that structured pruning
must refuse (a skip connection; Python that torch.fx cannot trace)."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Dropout(0.1), nn.Linear(hidden, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class CNN(nn.Module):
    """conv-BN-ReLU, conv-ReLU-pool, flatten, linear: every kind of step slicing follows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        out: torch.Tensor = self.head(torch.flatten(x, 1))
        return out


class Residual(nn.Module):
    """Every Linear's outputs meet another value (a skip) or leave the model."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.b(torch.relu(self.a(x)) + x)
        return out


class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        out: torch.Tensor = self.b(h)
        return out


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x).mean(dim=(2, 3))
        return out


M = TypeVar("M", bound=nn.Module)


def trained_like(model: M, seed: int = 0) -> M:
    """``model`` with random weights and BatchNorm statistics that are not the defaults, so
    a slice that forgot the running statistics would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


class Sideways(nn.Module):
    """A Linear over a convolution's last axis (its width), not its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.conv(x)).mean(dim=(1, 2))
        return out
