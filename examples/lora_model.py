"""The models of the LoRA fine-tuning example: a base MLP, and the same MLP with its weights
frozen and low-rank adapters beside them (LoRA, Hu et al. 2021).

The adapted model names its layers as the base does (``fc1.weight``, ``fc1.bias``, ...), so
``init_from=base_job`` loads the base's weights into it by name; the adapters (``lora_a``,
``lora_b``) are not in the base and keep their initialisation, with ``lora_b`` at zero so the
fine-tune starts as exactly the base model. Frozen parameters (``requires_grad=False``) are
never pulled or pushed: a step moves only the adapters' few thousand numbers.

This file travels to the workers as source, so it holds only what building the models needs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class BaseMLP(nn.Module):
    """``inputs`` -> ``hidden`` -> ``hidden`` -> ``classes``, ReLU between."""

    def __init__(self, inputs: int = 64, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return out


class LoRALinear(nn.Module):
    """A frozen ``W x + b`` plus a trainable rank-``rank`` update ``(B A) x * alpha / rank``.

    ``weight`` and ``bias`` have nn.Linear's names and shapes, so a Linear's state loads into
    them. ``A`` starts random and ``B`` at zero: the update is zero until training moves it.
    """

    def __init__(self, inputs: int, outputs: int, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.weight = nn.Parameter(torch.empty(outputs, inputs), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(outputs), requires_grad=False)
        # nn.Linear's own initialisation, so the model is sensible even without init_from.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.lora_a = nn.Parameter(torch.randn(rank, inputs) / math.sqrt(inputs))
        self.lora_b = nn.Parameter(torch.zeros(outputs, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x @ self.lora_a.t()) @ self.lora_b.t()
        return F.linear(x, self.weight, self.bias) + update * self.scale


class LoRAMLP(nn.Module):
    """BaseMLP with every layer frozen and a rank-``rank`` adapter beside each."""

    def __init__(
        self, inputs: int = 64, hidden: int = 256, classes: int = 10, rank: int = 4
    ) -> None:
        super().__init__()
        self.fc1 = LoRALinear(inputs, hidden, rank)
        self.fc2 = LoRALinear(hidden, hidden, rank)
        self.fc3 = LoRALinear(hidden, classes, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return out
