"""Models and losses a user writes in their own file (shipped to workers as this source)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Classifier(nn.Module):
    def __init__(self, inputs: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


class TokenModel(nn.Module):
    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.emb(ids))
        return out


class TwoInputs(nn.Module):
    """forward(**X): a dense part and token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3)
        self.fc = nn.Linear(4 + 3, 2)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.cat([dense, self.emb(ids).mean(dim=1)], dim=1))
        return out


def huber(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss of the user's own."""
    return F.smooth_l1_loss(out, y.reshape(out.shape))
