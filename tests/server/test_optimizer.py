"""The server-side optimizer is torch.optim: same validation messages, bit-identical updates."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.optimizer import FlatOptimizer, parse_optimizer
from pscluster.v1 import common_pb2

SHAPES = [(37, 13), (13,), (5, 37), (5,), (1000, 3), (7,)]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (dict(name="rmsprop", lr=0.1), "not supported"),
        (dict(name="", lr=0.1), "not supported"),
        (dict(name="sgd", lr=0.0), "lr must be > 0"),
        (dict(name="sgd", lr=float("nan")), "lr must be > 0"),
        (dict(name="sgd", lr=-1.0), "lr must be > 0"),
        (dict(name="sgd", lr=0.1, momentum=-0.5), "momentum must be >= 0"),
        (dict(name="sgd", lr=0.1, dampening=-0.1), "dampening must be >= 0"),
        (dict(name="sgd", lr=0.1, weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(name="sgd", lr=0.1, nesterov=True), "nesterov needs momentum > 0"),
        (dict(name="sgd", lr=0.1, nesterov=True, momentum=0.9, dampening=0.1), "dampening == 0"),
        (dict(name="sgd", lr=0.1, beta1=0.5), "takes no beta1"),
        (dict(name="adam", lr=0.1, beta1=1.0), "beta1 must be in [0, 1)"),
        (dict(name="adam", lr=0.1, beta2=1.5), "beta2 must be in [0, 1)"),
        (dict(name="adamw", lr=0.1, eps=-1e-8), "eps must be >= 0"),
        (dict(name="adam", lr=0.1, momentum=0.9), "takes no momentum"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(
    config: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidArgument, match=expected.replace("[", r"\[").replace(")", r"\)")):
        parse_optimizer(common_pb2.OptimizerConfig(**config))


def test_zero_means_default_for_adam_betas_and_eps() -> None:
    spec = parse_optimizer(common_pb2.OptimizerConfig(name="Adam", lr=1e-3))
    assert (spec.name, spec.betas, spec.eps) == ("adam", (0.9, 0.999), 1e-8)


@pytest.mark.parametrize(
    ("config", "torch_cls", "kwargs"),
    [
        (dict(name="sgd", lr=0.1), torch.optim.SGD, dict(lr=0.1)),
        (
            dict(name="sgd", lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
            torch.optim.SGD,
            dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
        ),
        (
            dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True),
            torch.optim.SGD,
            dict(lr=0.05, momentum=0.9, nesterov=True),
        ),
        (dict(name="adam", lr=1e-3), torch.optim.Adam, dict(lr=1e-3)),
        (
            dict(name="adamw", lr=1e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01),
            torch.optim.AdamW,
            dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
        ),
    ],
)
def test_flat_updates_equal_torch_optim_on_the_model_tensors(
    config: dict[str, Any], torch_cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]
) -> None:
    # Prepare: a "model" of several tensors, and the same values as one flat vector.
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    flat = FlatOptimizer(
        torch.cat([p.detach().reshape(-1) for p in params]).clone(),
        parse_optimizer(common_pb2.OptimizerConfig(**config)),
    )
    reference = torch_cls(params, **kwargs)

    # Execute: the same gradients through both, several steps (momentum and Adam state).
    for _ in range(4):
        grads = [torch.randn(s, generator=gen) for s in SHAPES]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        reference.step()
        flat.step(torch.cat([g.reshape(-1) for g in grads]))

    # Assert: bit-identical, not merely close.
    expected = torch.cat([p.detach().reshape(-1) for p in params])
    assert torch.equal(flat.values, expected)


def test_step_refuses_a_gradient_of_the_wrong_shape() -> None:
    opt = FlatOptimizer(
        torch.zeros(4), parse_optimizer(common_pb2.OptimizerConfig(name="sgd", lr=1))
    )
    with pytest.raises(InvalidArgument, match="shape"):
        opt.step(torch.zeros(5))
    assert torch.equal(opt.values, torch.zeros(4))
