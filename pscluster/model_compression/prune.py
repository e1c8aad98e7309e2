"""Which weights pruning removes: global magnitude (unstructured) or whole neurons (structured).

Unstructured: the ``amount`` share of all Linear and Conv weights with the smallest magnitude,
ranked across layers together (global magnitude pruning, as
``torch.nn.utils.prune.global_unstructured`` with L1), so a layer with many small weights
gives up more of them. Biases, normalisation and embeddings are kept: they are few and each
matters more. Structured: in each layer that can be sliced
(:mod:`pscluster.model_compression.structure`), the ``amount`` share of its output neurons
or channels with the smallest L1 norm, each layer on its own (a global ranking would empty
the layers whose weights are small by scale); the neuron's bias and its BatchNorm scale
and shift go with it, so its output is exactly zero and slicing it away changes nothing.

A mask here says what is *pruned* (True). Weights that are already exactly zero count as
pruned: they contribute nothing, and the shards hold the zeros of the starting weights
(``JobSpec.hold_zeros``), so the masks and what the fine-tune holds are the same set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pscluster.model_compression.structure import Cut

Masks = dict[str, torch.Tensor]  # state_dict name -> bool tensor of its shape, True: pruned
PRUNED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PruneSpec:
    """``amount`` in [0, 1): the share removed; ``structured``: whole neurons/channels."""

    amount: float
    structured: bool = False

    @classmethod
    def parse(cls, prune: PruneSpec | float | Mapping[str, object] | None) -> PruneSpec | None:
        """From ``prune=0.5`` or ``prune={"amount": 0.5, "structured": True}``; ValueError
        naming what is wrong."""
        if prune is None or isinstance(prune, PruneSpec):
            return cls._checked(prune) if prune else None
        if isinstance(prune, bool) or not isinstance(prune, (int, float, Mapping)):
            raise ValueError(
                f"prune must be an amount or a dict such as {{'amount': 0.5, 'structured': "
                f"False}}, got {type(prune).__name__}"
            )
        if not isinstance(prune, Mapping):
            return cls._checked(cls(float(prune)))
        unknown = sorted(set(prune) - {"amount", "structured"})
        if unknown or "amount" not in prune:
            raise ValueError(
                f"prune takes 'amount' (required) and 'structured'; got {sorted(prune)}"
            )
        amount, structured = prune["amount"], prune.get("structured", False)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"prune amount must be a number in [0, 1), got {amount!r}")
        if not isinstance(structured, bool):
            raise ValueError(f"prune structured must be True or False, got {structured!r}")
        return cls._checked(cls(float(amount), structured))

    @staticmethod
    def _checked(spec: PruneSpec) -> PruneSpec:
        if not 0.0 <= spec.amount < 1.0:  # also refuses NaN
            raise ValueError(
                f"prune amount must be in [0, 1) (the share of weights removed), got {spec.amount}"
            )
        return spec

    @property
    def label(self) -> str:
        kind = "structured" if self.structured else "unstructured"
        return f"{kind} {self.amount:.0%}"


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights unstructured pruning ranks: trainable Linear and Conv weights, by name."""
    out: dict[str, nn.Parameter] = {}
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, PRUNED_LAYERS) or not isinstance(weight, nn.Parameter):
            continue
        if weight.requires_grad:
            out[f"{path}.weight" if path else "weight"] = weight
    return out


def magnitude_masks(model: nn.Module, amount: float) -> Masks:
    """Global magnitude pruning: the ``amount`` share of :func:`prunable_weights` with the
    smallest absolute value (ties broken by position, so the count is exact)."""
    weights = prunable_weights(model)
    if not weights:
        raise ValueError(f"{type(model).__name__} has no trainable Linear or Conv weight to prune")
    scores = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    pruned = torch.zeros(scores.numel(), dtype=torch.bool)
    count = round(amount * scores.numel())
    if count:
        pruned[torch.argsort(scores, stable=True)[:count]] = True
    pruned |= scores == 0
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = pruned[offset : offset + w.numel()].reshape(w.shape)
        offset += w.numel()
    return masks


def structured_masks(
    model: nn.Module, amount: float, cuts: Sequence[Cut]
) -> tuple[Masks, dict[str, torch.Tensor]]:
    """Per cut, the ``amount`` share of the producer's output rows with the smallest L1 norm
    (at least one kept), as masks over the producer's weight and bias and the BatchNorm
    scales and shifts between it and its consumers (plus any exact zero of those weights);
    and the rows kept, per producer (bool over its outputs), which slicing keeps."""
    params = dict(model.named_parameters())
    masks: Masks = {}
    kept: dict[str, torch.Tensor] = {}
    for cut in cuts:
        weight = params[f"{cut.producer}.weight"].detach()
        rows = dropped_rows(weight, amount)
        kept[cut.producer] = torch.ones(weight.shape[0], dtype=torch.bool)
        kept[cut.producer][rows] = False
        mask = torch.zeros(weight.shape, dtype=torch.bool)
        mask[rows] = True
        masks[f"{cut.producer}.weight"] = mask | (weight == 0)
        for name in (f"{cut.producer}.bias", *_norm_params(cut)):
            if name in params:
                vector = torch.zeros(params[name].shape, dtype=torch.bool)
                vector[rows] = True
                masks[name] = vector
    return masks, kept


def dropped_rows(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Indices of the output rows pruned: the smallest L1 norms, at least one row kept."""
    norms = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
    count = min(round(amount * norms.numel()), norms.numel() - 1)
    return torch.argsort(norms, stable=True)[:count]


def _norm_params(cut: Cut) -> list[str]:
    return [f"{norm}.{p}" for norm in cut.norms for p in ("weight", "bias")]


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Set the pruned entries of ``model``'s parameters to zero, in place."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name {unknown}, which are not parameters of the model")
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(mask, 0.0)


def pruned_count(masks: Masks) -> int:
    return sum(int(m.sum()) for m in masks.values())
