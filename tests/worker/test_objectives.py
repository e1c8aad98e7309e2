"""What a worker trains a distilled student on: the teacher rebuilt from its own job's code
(beside a student whose module has the same name), run frozen in eval() mode, and the step
(one push per step, local steps, bf16) taking the distillation loss as it takes any loss;
checked against plain PyTorch doing the same."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pscluster.errors import InvalidArgument
from pscluster.model import rebuild, state
from pscluster.model.buffers import BufferLayout
from pscluster.model.layout import ParamLayout
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.worker.local_sgd import LocalSGD
from pscluster.worker.objectives import DistillObjective, HardObjective, objective_for
from pscluster.worker.precision import Precision

# Two projects' "nets.py": the same module and class names, different models.
TEACHER_SOURCE = """
import torch
from torch import nn

WIDTH = 32


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, WIDTH), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(WIDTH, 3))

    def forward(self, x):
        return self.body(x)
"""
STUDENT_SOURCE = """
from torch import nn

WIDTH = 4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(6, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 3))

    def forward(self, x):
        return self.fc(x)
"""
SGD = common_pb2.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9)
CPU = torch.device("cpu")


def model_spec(source: str) -> co_pb2.ModelSpec:
    return co_pb2.ModelSpec(source=source, class_name="Net", kwargs_json="{}", module="nets")


def trained_teacher() -> tuple[co_pb2.ModelSpec, bytearray]:
    """The teacher's spec and a saved state of it, as the coordinator serves them."""
    spec = model_spec(TEACHER_SOURCE)
    torch.manual_seed(3)
    built = rebuild.load_code(spec).model_class("Net")()
    return spec, bytearray(state.dumps(built.state_dict()))


def distill_spec(temperature: float = 2.0, alpha: float = 0.6) -> co_pb2.JobSpec:
    teacher_model, _ = trained_teacher()
    return co_pb2.JobSpec(
        model=model_spec(STUDENT_SOURCE),
        loss="cross_entropy",
        distill=co_pb2.DistillSpec(
            teacher_job="j-teacher",
            temperature=temperature,
            alpha=alpha,
            teacher_model=teacher_model,
        ),
    )


def student() -> nn.Module:
    torch.manual_seed(4)
    return rebuild.load_code(model_spec(STUDENT_SOURCE)).model_class("Net")()


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


def reference_loss(
    model: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, t: float, a: float
) -> torch.Tensor:
    """Hinton et al.'s loss written out in PyTorch, as a user would."""
    with torch.no_grad():
        soft = F.softmax(teacher(x) / t, dim=1)
    out = model(x)
    kl = F.kl_div(F.log_softmax(out / t, dim=1), soft, reduction="batchmean")
    return a * t * t * kl + (1 - a) * F.cross_entropy(out, y)


def test_teacher_and_student_modules_of_the_same_name_stay_apart() -> None:
    # Prepare
    spec = distill_spec()
    fetched: list[int] = []

    def teacher_state() -> bytearray:
        fetched.append(1)
        return trained_teacher()[1]

    # Execute
    objective = objective_for(spec, F.cross_entropy, CPU, teacher_state)
    model = student()

    # Assert: each Net is its own project's, and neither "nets" is left importable
    assert isinstance(objective, DistillObjective) and fetched == [1]
    teacher_weights = dict(objective.teacher.named_parameters())
    assert teacher_weights["body.0.weight"].shape == (32, 6)
    assert dict(model.named_parameters())["fc.0.weight"].shape == (4, 6)
    assert "nets" not in sys.modules
    assert not objective.teacher.training
    assert not any(p.requires_grad for p in objective.teacher.parameters())


def test_a_job_that_does_not_distill_trains_on_its_loss_and_fetches_no_teacher() -> None:
    def no_teacher() -> bytearray:
        raise AssertionError("a job without a teacher fetched one")

    objective = objective_for(
        co_pb2.JobSpec(loss="cross_entropy"), F.cross_entropy, CPU, no_teacher
    )

    assert isinstance(objective, HardObjective)


def test_the_objective_is_hintons_loss_with_the_teacher_in_eval_mode() -> None:
    # Prepare: a teacher with dropout, which must not drop anything
    spec = distill_spec(temperature=3.0, alpha=0.8)
    objective = objective_for(spec, F.cross_entropy, CPU, lambda: trained_teacher()[1])
    model = student()
    ((x, y),) = batches(1)

    # Execute
    first = objective(model, x, y)
    second = objective(model, x, y)

    # Assert
    teacher = copy.deepcopy(objective.teacher)  # type: ignore[attr-defined]
    expected = reference_loss(model, teacher.eval(), x, y, 3.0, 0.8)
    assert first.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(first, second)


@pytest.mark.parametrize("local_steps", [1, 3])
def test_a_window_trains_the_student_as_pytorch_would_and_leaves_the_teacher(
    local_steps: int,
) -> None:
    # Prepare
    spec = distill_spec()
    objective = objective_for(spec, F.cross_entropy, CPU, lambda: trained_teacher()[1])
    teacher: nn.Module = objective.teacher  # type: ignore[attr-defined]
    before = copy.deepcopy(teacher.state_dict())
    model, reference = student(), student()
    layout = ParamLayout.of_module(model)
    start = layout.flatten(dict(model.named_parameters()))
    local = LocalSGD(
        model,
        (layout, BufferLayout.of_module(model)),
        objective,
        SGD,
        local_steps,
        Precision("fp32", CPU),
    )
    data = batches(local_steps)

    # Execute
    window = local.run(start, torch.zeros(0, dtype=torch.float64), data)

    # Assert: one step pushes the gradient; local steps push (start - end) / lr of the same
    # steps taken by torch.optim.SGD on the reference.
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for x, y in data:
        opt.zero_grad()
        reference_loss(reference, teacher, x, y, 2.0, 0.6).backward()  # type: ignore[no-untyped-call]
        if local_steps > 1:
            opt.step()
    assert window.update is not None and window.samples == 8 * local_steps
    if local_steps == 1:
        expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])  # type: ignore[union-attr]
    else:
        expected = (start - layout.flatten(dict(reference.named_parameters()))) / 0.1
    assert torch.allclose(window.update, expected, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_a_bf16_window_distills_in_autocast() -> None:
    spec = distill_spec()
    objective = objective_for(spec, F.cross_entropy, CPU, lambda: trained_teacher()[1])
    model = student()
    layout = ParamLayout.of_module(model)
    local = LocalSGD(
        model, (layout, BufferLayout.of_module(model)), objective, SGD, 1, Precision("bf16", CPU)
    )
    start = layout.flatten(dict(model.named_parameters()))

    window = local.run(start, torch.zeros(0, dtype=torch.float64), batches(1))

    assert window.update is not None and window.nonfinite == 0
    assert window.update.dtype == torch.float32 and bool(window.update.abs().sum() > 0)


def test_a_student_whose_outputs_differ_fails_the_batch_naming_the_teacher() -> None:
    objective = objective_for(distill_spec(), F.cross_entropy, CPU, lambda: trained_teacher()[1])
    wide = nn.Linear(6, 4)
    ((x, y),) = batches(1)

    with pytest.raises(InvalidArgument, match="teacher j-teacher outputs"):
        objective(wide, x, y)
