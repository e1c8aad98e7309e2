"""What a worker minimises on a batch: the job's loss of the model's output, or, for a
distillation job (``JobSpec.distill``), that loss mixed with the teacher's soft targets.

The training step (:class:`pscluster.worker.local_sgd.LocalSGD`) asks an objective for the
loss of ``(model, x, y)`` and knows nothing else, so one step, local steps, every consistency
mode and every precision train a distilled student as they train any model. Evaluation keeps
the job's own loss and metric: a distilled job reports its student as any job reports its
model.

The teacher is a completed job's saved model (the job's "teacher" blob, hard-linked by the
coordinator) built from that job's own shipped code, imported in a bundle of its own
(:mod:`pscluster.model.loader`): teacher and student may both ship a ``models.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from pscluster.data import inputs
from pscluster.data.inputs import Inputs
from pscluster.model import distill, rebuild
from pscluster.model.distill import Distillation
from pscluster.model.objective import LossFn
from pscluster.v1 import coordinator_pb2 as co_pb2

# The blob a distillation job's teacher model is served as (FetchBlob).
TEACHER_BLOB = "teacher"


class BatchObjective(Protocol):
    """The training loss of one batch, with the graph to the model's parameters."""

    def __call__(self, model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor: ...


class HardObjective:
    """The job's loss of the model's output: what every job that does not distill trains on."""

    def __init__(self, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn

    def __call__(self, model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(inputs.call(model, x), y)


class DistillObjective:
    """``alpha * T^2 * KL(teacher || student) + (1 - alpha) * loss`` on each batch, the
    teacher run in ``eval()`` under ``no_grad`` (and whatever autocast the step is under)."""

    def __init__(
        self, teacher: nn.Module, loss_fn: LossFn, spec: co_pb2.JobSpec, teacher_job: str = ""
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss_fn = loss_fn
        self.loss = spec.loss
        self.settings = Distillation.of(spec.distill)
        self.teacher_job = teacher_job or spec.distill.teacher_job

    def __call__(self, model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = inputs.call(self.teacher, x)
        out = inputs.call(model, x)
        distill.check_outputs(out.shape, soft.shape, self.teacher_job)
        return distill.distill_loss(out, soft, self.loss_fn(out, y), self.loss, self.settings)


def objective_for(
    spec: co_pb2.JobSpec,
    loss_fn: LossFn,
    device: torch.device,
    teacher_state: Callable[[], bytearray],
) -> BatchObjective:
    """The job's objective; ``teacher_state`` fetches the teacher's saved model, asked only
    for a distillation job (once: the teacher is built once per job and worker, from its own
    job's code with that state loaded strict, as a user rebuilds a fetched model)."""
    if not spec.HasField("distill"):
        return HardObjective(loss_fn)
    teacher = rebuild.trained_model(spec.distill.teacher_model, teacher_state())
    return DistillObjective(teacher.to(device), loss_fn, spec)
