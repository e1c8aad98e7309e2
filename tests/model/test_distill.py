"""Distillation's loss against its textbook definition (Hinton et al. 2015), and the rules that
refuse a distillation that cannot work."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from pscluster.errors import InvalidArgument
from pscluster.model import distill
from pscluster.model.distill import Distillation


def logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_the_soft_loss_is_the_batchmean_kl_of_the_softened_outputs() -> None:
    # Prepare
    student, teacher = logits(16, 10, seed=1), logits(16, 10, seed=2)
    t = 4.0

    # Execute
    soft = distill.soft_loss(student, teacher, "cross_entropy", t)

    # Assert: sum over classes of p * (log p - log q), averaged over rows
    p = F.softmax(teacher / t, dim=1)
    expected = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(dim=1).mean()
    assert soft.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_loss_mixes_t_squared_soft_and_the_hard_loss_by_alpha() -> None:
    # Prepare
    student, teacher = logits(8, 5, seed=3), logits(8, 5, seed=4)
    y = torch.arange(8) % 5
    hard = F.cross_entropy(student, y)
    soft = distill.soft_loss(student, teacher, "cross_entropy", 2.0)

    # Execute
    mixed = distill.distill_loss(student, teacher, hard, "cross_entropy", Distillation(2.0, 0.7))
    only_hard = distill.distill_loss(student, teacher, hard, "", Distillation(2.0, 0.0))
    only_soft = distill.distill_loss(student, teacher, hard, "", Distillation(2.0, 1.0))

    # Assert
    assert mixed.item() == pytest.approx(0.7 * 4.0 * soft.item() + 0.3 * hard.item(), rel=1e-6)
    assert torch.equal(only_hard, hard)
    assert only_soft.item() == pytest.approx(4.0 * soft.item(), rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.floats(0.5, 20.0))
def test_the_soft_loss_is_never_negative_and_zero_on_the_teachers_own_outputs(
    seed: int, t: float
) -> None:
    student, teacher = logits(6, 4, seed=seed), logits(6, 4, seed=seed + 1)

    assert distill.soft_loss(student, teacher, "cross_entropy", t).item() >= -1e-6
    assert distill.soft_loss(teacher, teacher, "cross_entropy", t).item() == pytest.approx(
        0.0, abs=1e-5
    )


def test_at_a_high_temperature_the_gradient_matches_the_logits_as_hinton_says() -> None:
    # Prepare: zero-mean logits (Hinton et al., section 2.1)
    student = (logits(4, 10, seed=5) * 0.1).requires_grad_(True)
    teacher = logits(4, 10, seed=6) * 0.1
    student.data -= student.data.mean(dim=1, keepdim=True)
    teacher -= teacher.mean(dim=1, keepdim=True)
    t = 50.0

    # Execute: the T^2-scaled soft loss, as the job trains on it
    (t * t * distill.soft_loss(student, teacher, "cross_entropy", t)).backward()  # type: ignore[no-untyped-call]

    # Assert: dC/dz_i ~ (z_i - v_i) / N per row of the batch of 4 (the T^2 undoes the 1/T^2)
    assert student.grad is not None
    expected = (student.detach() - teacher) / 10 / 4
    assert torch.allclose(student.grad, expected, atol=2e-4)


def test_bce_with_logits_compares_a_sigmoid_per_output() -> None:
    # Prepare: 3 independent labels per row
    student, teacher = logits(5, 3, seed=7), logits(5, 3, seed=8)
    t = 2.0

    # Execute
    soft = distill.soft_loss(student, teacher, "bce_with_logits", t)

    # Assert: the KL of two Bernoulli distributions, averaged over every output
    p, q = torch.sigmoid(teacher / t), torch.sigmoid(student / t)
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    assert soft.item() == pytest.approx(kl.mean().item(), rel=1e-4)


def test_outputs_with_positions_are_averaged_over_rows_and_positions() -> None:
    # Prepare: (rows, classes, positions), as cross_entropy takes a sequence's tokens
    student, teacher = logits(3, 5, 7, seed=9), logits(3, 5, 7, seed=10)

    # Execute
    soft = distill.soft_loss(student, teacher, "cross_entropy", 1.0)

    # Assert: the same as the 21 positions taken as rows of their own
    flat = distill.soft_loss(
        student.permute(0, 2, 1).reshape(21, 5), teacher.permute(0, 2, 1).reshape(21, 5), "", 1.0
    )
    assert soft.item() == pytest.approx(flat.item(), rel=1e-5)


def test_the_loss_is_float32_under_bfloat16_autocast() -> None:
    student, teacher = logits(4, 3).bfloat16(), logits(4, 3, seed=1).bfloat16()

    soft = distill.soft_loss(student, teacher, "cross_entropy", 3.0)

    assert soft.dtype == torch.float32 and math.isfinite(soft.item())


@pytest.mark.parametrize(
    ("temperature", "alpha", "words"),
    [
        (0.0, 0.5, "temperature must be > 0"),
        (-1.0, 0.5, "temperature must be > 0"),
        (math.nan, 0.5, "temperature must be > 0"),
        (math.inf, 0.5, "temperature must be > 0"),
        (4.0, -0.1, "alpha must be in [0, 1]"),
        (4.0, 1.5, "alpha must be in [0, 1]"),
        (4.0, math.nan, "alpha must be in [0, 1]"),
        (True, 0.5, "temperature must be a number"),
        (4.0, "0.5", "alpha must be a number"),
    ],
)
def test_a_temperature_or_alpha_that_cannot_work_is_refused(
    temperature: float, alpha: float, words: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        Distillation(temperature, alpha).check()
    assert words in str(refused.value)


def test_the_edges_of_alpha_are_allowed() -> None:
    Distillation(1e-3, 0.0).check()
    Distillation(20.0, 1.0).check()


@pytest.mark.parametrize("loss", ["mse", "l1", "custom"])
def test_a_student_loss_not_on_logits_is_refused(loss: str) -> None:
    with pytest.raises(InvalidArgument, match="must be one of"):
        distill.check_student_loss(loss)


def test_a_teacher_trained_on_other_outputs_is_refused() -> None:
    distill.check_student_loss("")  # the default, cross_entropy
    distill.check_teacher_loss("", "custom", "j-1")  # the user's own loss: taken as logits
    with pytest.raises(InvalidArgument, match="trained with loss 'mse'"):
        distill.check_teacher_loss("cross_entropy", "mse", "j-1")
    with pytest.raises(InvalidArgument, match="trained with loss 'bce_with_logits'"):
        distill.check_teacher_loss("cross_entropy", "bce_with_logits", "j-1")


def test_outputs_of_another_shape_are_refused_naming_both() -> None:
    distill.check_outputs(torch.Size([4, 10]), torch.Size([4, 10]), "j-1")
    with pytest.raises(InvalidArgument, match=r"\(4, 11\) where the teacher j-1 outputs \(4, 10\)"):
        distill.check_outputs(torch.Size([4, 11]), torch.Size([4, 10]), "j-1")
