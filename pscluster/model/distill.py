"""Knowledge distillation's rules and its loss: what a distillation job may ask for, and what
the student is trained on.

Hinton et al. (2015, "Distilling the Knowledge in a Neural Network") train a small model, the
student, on the outputs of a large one, the teacher, softened by a temperature T: the
teacher's small probabilities for the wrong classes say which of them look alike, which one-hot
labels do not. The student's loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard_loss

where the T^2 keeps the soft term's gradients at the scale of the hard one's as T changes.
Soft targets are probabilities over classes, so only a loss on logits can be distilled:
``cross_entropy`` (softmax over dim 1) and ``bce_with_logits`` (an independent sigmoid per
output, the KL of two Bernoulli distributions summed over the outputs).

The SDK, the coordinator and the workers check and compute with these same functions, so a
job accepted at the door is one no worker refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from pscluster.errors import InvalidArgument
from pscluster.model import objective
from pscluster.v1 import coordinator_pb2 as co_pb2


@dataclass(frozen=True)
class Distillation:
    """How much the teacher counts (``alpha``) and how soft its outputs are (``temperature``)."""

    temperature: float
    alpha: float

    @classmethod
    def of(cls, spec: co_pb2.DistillSpec) -> Distillation:
        return cls(spec.temperature, spec.alpha)

    def check(self) -> None:
        """InvalidArgument unless T > 0 and alpha in [0, 1], both finite numbers."""
        for name, value in (("temperature", self.temperature), ("alpha", self.alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgument(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidArgument(
                f"temperature must be > 0, got {self.temperature}; it divides the logits "
                "(Hinton et al. use 1 to 20; higher is softer)"
            )
        if not (math.isfinite(self.alpha) and 0 <= self.alpha <= 1):
            raise InvalidArgument(
                f"alpha must be in [0, 1], got {self.alpha}; it weighs the teacher's soft loss "
                "against the labels' hard loss (1 - alpha)"
            )

    def to_proto(self, teacher_job: str) -> co_pb2.DistillSpec:
        return co_pb2.DistillSpec(
            teacher_job=teacher_job, temperature=float(self.temperature), alpha=float(self.alpha)
        )


def check_student_loss(loss: str) -> None:
    """InvalidArgument unless the student's loss is a classification loss on logits."""
    student = objective.loss_name(loss)
    if student not in objective.CLASSIFICATION:
        raise InvalidArgument(
            f"distillation trains on the teacher's soft targets, class probabilities from "
            f"logits: the student's loss must be one of {list(objective.CLASSIFICATION)}, not "
            f"{student!r}"
        )


def check_teacher_loss(student_loss: str, teacher_loss: str, teacher: str) -> None:
    """InvalidArgument unless the teacher was trained on logits of the student's kind (or
    with a loss of its user's own, taken to be on logits)."""
    student, trained = objective.loss_name(student_loss), objective.loss_name(teacher_loss)
    if trained not in (student, objective.CUSTOM):
        raise InvalidArgument(
            f"the teacher {teacher} was trained with loss {trained!r}, the student with "
            f"{student!r}: its outputs are not the logits the student's loss softens"
        )


def check_outputs(student: torch.Size, teacher: torch.Size, teacher_job: str) -> None:
    """InvalidArgument unless the student's output has the teacher's shape, row for row."""
    if tuple(student) != tuple(teacher):
        raise InvalidArgument(
            f"the student outputs shape {tuple(student)} where the teacher {teacher_job} "
            f"outputs {tuple(teacher)} on the same rows; the student learns the teacher's "
            "outputs one to one, so it needs as many (the same classes)"
        )


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, loss: str, t: float) -> torch.Tensor:
    """KL(teacher's soft targets || student's) at temperature ``t``, averaged as the job's
    hard loss averages: over rows for cross_entropy (and over positions, for outputs shaped
    (rows, classes, ...)), over every output for bce_with_logits. In float32 whatever the
    autocast."""
    s, q = student.float() / t, teacher.detach().float() / t
    if objective.loss_name(loss) == "bce_with_logits":
        p = torch.sigmoid(q)
        # KL(p || sigmoid(s)) = BCE(s, p) - BCE(q, p): the entropy of p taken away.
        kl = F.binary_cross_entropy_with_logits(s, p, reduction="sum")
        kl = kl - F.binary_cross_entropy_with_logits(q, p, reduction="sum")
        return kl / max(1, s.numel())
    kl = F.kl_div(
        F.log_softmax(s, dim=1), F.log_softmax(q, dim=1), reduction="sum", log_target=True
    )
    return kl / max(1, s.numel() // s.shape[1])


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    hard: torch.Tensor,
    loss: str,
    settings: Distillation,
) -> torch.Tensor:
    """``alpha * T^2 * soft + (1 - alpha) * hard``, ``hard`` being the job's loss of the batch."""
    t, alpha = settings.temperature, settings.alpha
    soft = soft_loss(student, teacher, loss, t)
    return alpha * t * t * soft + (1.0 - alpha) * hard
