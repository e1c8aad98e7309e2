"""Pruning masks and structured slicing, in one process: the counts, what is kept, and that a
sliced model computes exactly what the masked one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pscluster.model_compression import prune, structure
from pscluster.model_compression.prune import PruneSpec
from tests.model_compression.models import CNN, MLP, Branchy, Residual, Sideways, trained_like


def test_global_magnitude_prunes_the_smallest_share_across_layers() -> None:
    # Prepare
    model = trained_like(MLP())
    weights = prune.prunable_weights(model)
    total = sum(w.numel() for w in weights.values())

    # Execute
    masks = prune.magnitude_masks(model, 0.5)

    # Assert: exactly half, ranked across layers (the largest pruned below the smallest kept)
    assert set(masks) == {"net.0.weight", "net.2.weight", "net.5.weight"}
    assert prune.pruned_count(masks) == round(0.5 * total)
    pruned = torch.cat([weights[n].detach().abs()[m] for n, m in masks.items()])
    kept = torch.cat([weights[n].detach().abs()[~m] for n, m in masks.items()])
    assert pruned.max() <= kept.min()


def test_weights_already_zero_count_as_pruned() -> None:
    model = trained_like(MLP())
    first = model.net[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight[:, :40] = 0.0  # more zeros than 1% of the weights

    masks = prune.magnitude_masks(model, 0.01)

    assert bool(masks["net.0.weight"][:, :40].all())


def test_apply_masks_zeroes_exactly_the_masked_entries() -> None:
    model = trained_like(MLP())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = prune.magnitude_masks(model, 0.3)

    prune.apply_masks(model, masks)

    after = model.state_dict()
    for name, mask in masks.items():
        assert torch.equal(after[name][mask], torch.zeros(int(mask.sum())))
        assert torch.equal(after[name][~mask], before[name][~mask])
    assert torch.equal(after["net.0.bias"], before["net.0.bias"])


@pytest.mark.parametrize(
    ("model", "x"),
    [(MLP(), torch.randn(7, 64)), (CNN(), torch.randn(7, 1, 8, 8))],
    ids=["mlp", "cnn"],
)
def test_a_sliced_model_is_smaller_and_computes_what_the_masked_one_does(
    model: nn.Module, x: torch.Tensor
) -> None:
    # Prepare
    model = trained_like(model)
    plan = structure.plan(model)
    masks, kept = prune.structured_masks(model, 0.5, plan.cuts)
    prune.apply_masks(model, masks)

    # Execute
    small = structure.slice_model(model, plan.cuts, kept)

    # Assert
    full_count = sum(p.numel() for p in model.parameters())
    small_count = sum(p.numel() for p in small.parameters())
    assert small_count < 0.6 * full_count
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), model.eval()(x), atol=1e-5)


def test_the_cnn_plan_follows_batchnorm_pooling_and_flatten() -> None:
    plan = structure.plan(CNN())

    cuts = {c.producer: c for c in plan.cuts}
    assert cuts["conv1"] == structure.Cut("conv1", ("conv2",), ("bn",), False)
    assert cuts["conv2"] == structure.Cut("conv2", ("head",), (), True)
    assert "head" in plan.skipped  # the model's output


def test_structured_masks_prune_whole_rows_with_bias_and_batchnorm() -> None:
    model = trained_like(CNN())
    plan = structure.plan(model)

    masks, kept = prune.structured_masks(model, 0.5, plan.cuts)

    assert int((~kept["conv1"]).sum()) == 4 and int((~kept["conv2"]).sum()) == 8
    rows = ~kept["conv1"]
    assert bool(masks["conv1.weight"][rows].all()) and not masks["conv1.weight"][~rows].any()
    for name in ("conv1.bias", "bn.weight", "bn.bias"):
        assert torch.equal(masks[name], rows)


def test_structured_pruning_keeps_a_neuron_even_at_a_large_amount() -> None:
    model = trained_like(MLP(hidden=4))
    plan = structure.plan(model)

    _, kept = prune.structured_masks(model, 0.99, plan.cuts)

    assert all(int(k.sum()) == 1 for k in kept.values())


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Residual(), "finds no layer of Residual it can slice.*meet other values"),
        (Branchy(), "needs a model torch.fx can trace.*structured=False"),
        (Sideways(), "conv: its outputs reach the module fc along another dimension"),
    ],
    ids=["skip-connection", "untraceable", "another-axis"],
)
def test_a_model_structured_pruning_cannot_slice_is_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        structure.plan(model)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0.5, PruneSpec(0.5)),
        (0, PruneSpec(0.0)),
        ({"amount": 0.25, "structured": True}, PruneSpec(0.25, True)),
        (None, None),
    ],
)
def test_prune_spec_parses(given: object, expected: PruneSpec | None) -> None:
    assert PruneSpec.parse(given) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (1.0, r"in \[0, 1\)"),
        (-0.1, r"in \[0, 1\)"),
        (float("nan"), r"in \[0, 1\)"),
        ({"amount": 2}, r"in \[0, 1\)"),
        ({"structured": True}, "'amount' \\(required\\)"),
        ({"amount": 0.5, "ratio": 1}, "'amount' \\(required\\)"),
        ({"amount": "half"}, "must be a number"),
        ({"amount": 0.5, "structured": "yes"}, "True or False"),
        (True, "must be an amount or a dict"),
    ],
)
def test_bad_prune_arguments_say_what_is_wrong(given: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PruneSpec.parse(given)  # type: ignore[arg-type]
