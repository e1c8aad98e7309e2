"""Knowledge distillation on a real local cluster (2 shards, 3 workers), as a user does it:
a teacher trained through the SDK, a student with under a quarter of its parameters distilled
from it (and, in the same run, the same student trained without it), both fetched and scored
here; the teacher and the student live in two projects' ``nets.py``; every request that cannot
be distilled is an InvalidJobError at the call; the CLI's job file takes a ``distill:``
section (async, local steps, bf16)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.errors import InvalidJobError
from pscluster.client.job import Job
from pscluster.client.local import LocalCluster
from tests.e2e.data import digits, eval_accuracy

pytestmark = pytest.mark.slow

# Two projects, each with its own "nets.py" defining "Net": the workers import each job's
# bundle apart, so the teacher's Net is never the student's.
TEACHER = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
"""
STUDENT = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class OnImages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))
"""
DATA = """
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (xtr, ytr), (xte, yte)
"""
SETTINGS: dict[str, Any] = {
    "mode": "sync",
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 64,
}


def project(root: Path, code: str) -> ModuleType:
    """``root/nets.py`` holding ``code``, imported as the module ``nets`` (not left in
    sys.modules: the other project's ``nets`` takes the name when it is submitted)."""
    root.mkdir(parents=True)
    (root / "nets.py").write_text(textwrap.dedent(code))
    spec = importlib.util.spec_from_file_location("nets", root / "nets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Shipping:
    """``nets`` names ``module`` while a job of it is sent (the SDK reads its source)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def __enter__(self) -> ModuleType:
        sys.modules["nets"] = self.module
        return self.module

    def __exit__(self, *exc: object) -> None:
        sys.modules.pop("nets", None)


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    root = tmp_path_factory.mktemp("projects")
    return project(root / "teacher", TEACHER), project(root / "student", STUDENT)


@pytest.fixture(scope="module")
def teacher(cluster: LocalCluster, projects: tuple[ModuleType, ModuleType]) -> Iterator[Job]:
    """The teacher (85,002 parameters) trained through the SDK: sync, Adam, 15 epochs (0.969
    to 0.972 in trials; SGD with momentum at lr 0.1 swung between 0.89 and 0.97 from one
    epoch to the next, and async's staleness left it at 0.925-0.947 at times)."""
    train, test = digits()
    with cluster.client() as client, Shipping(projects[0]) as nets:
        job = client.submit(
            model=nets.Net,
            train=train,
            test=test,
            epochs=15,
            seed=1,
            name="teacher",
            **{**SETTINGS, "optimizer": {"name": "adam", "lr": 2e-3}},
        )
        info = job.wait(timeout=300)
        assert info.state == "completed", info.error
        yield job


def scored(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> float:
    model.load_state_dict(state)
    _, (x, y) = digits()
    return eval_accuracy(model, x, y)


def test_a_student_with_a_fiftieth_of_the_parameters_distills_within_2_points(
    cluster: LocalCluster, teacher: Job, projects: tuple[ModuleType, ModuleType]
) -> None:
    # Prepare
    teachers, students = projects
    train, test = digits()
    same = {"epochs": 20, "seed": 2, **SETTINGS}

    # Execute: the student distilled, and the same student alone, side by side.
    with cluster.client() as client:
        with Shipping(students) as nets:
            distilled = client.distill(
                teacher=teacher,
                student=nets.Net,
                train=train,
                test=test,
                temperature=4.0,
                alpha=0.7,
                **same,
            )
            alone = client.submit(model=nets.Net, train=train, test=test, **same)
        done, solo = distilled.wait(timeout=300), alone.wait(timeout=300)
        fetched, fetched_alone = distilled.fetch_model(), alone.fetch_model()
        events = [(e.kind, e.message) for e in distilled.metrics().events]

    # Assert: what the job reports is what the fetched student scores here.
    assert done.state == solo.state == "completed", done.error or solo.error
    assert done.num_params * 4 <= teacher.info().num_params
    theirs = scored(teachers.Net(), teacher.fetch_model())
    ours, without = scored(students.Net(), fetched), scored(students.Net(), fetched_alone)
    assert ours == pytest.approx(done.test_accuracy, abs=1e-9)
    print(
        f"\nteacher {theirs:.4f} ({teacher.info().num_params} parameters); student "
        f"({done.num_params}): distilled {ours:.4f}, alone {without:.4f}, "
        f"difference {100 * (ours - without):+.2f} points"
    )
    assert ours >= theirs - 0.02
    said = f"distilled from teacher {teacher.id} (teacher, 85,002 parameters) at temperature 4"
    assert ("distilled", f"{said}, alpha 0.7") in events
    assert done.name == f"distill Net from {teacher.id}"


@pytest.mark.parametrize("case", ["unknown", "running", "predict", "outputs", "inputs"])
def test_a_teacher_that_cannot_teach_is_refused_at_the_call(
    cluster: LocalCluster, teacher: Job, projects: tuple[ModuleType, ModuleType], case: str
) -> None:
    # Prepare: each case a teacher, or a student, that cannot work; no job may be created.
    teachers, students = projects
    (x, y), test = digits()
    student, data, words = students.Net, ((x, y), test), ""
    source: Job | str
    with cluster.client() as client:
        before = {j.job_id for j in client.jobs()}
        if case == "unknown":
            source, words = "j-nothere", "'j-nothere' is an unknown job"
        elif case == "running":
            with Shipping(teachers) as nets:
                source = client.submit(model=nets.Net, train=(x, y), test=test, epochs=500)
            words = "is running: it has no trained model"
        elif case == "predict":
            source = client.submit_predict(teacher, data=x[:10])
            source.wait(timeout=120)
            words = "is a predict job: it has no model"
        elif case == "outputs":
            source, words = teacher, "the student outputs shape (9, 11) where the teacher"
            data = ((x, y), test)
        else:
            student, source, words = students.OnImages, teacher, "the teacher " + teacher.id
            data = ((x.reshape(-1, 1, 8, 8), y), (test[0].reshape(-1, 1, 8, 8), test[1]))
        created = {j.job_id for j in client.jobs()} - before
        kwargs: dict[str, Any] = {"model_kwargs": {"classes": 11}} if case == "outputs" else {}

        # Execute
        try:
            with Shipping(students), pytest.raises(InvalidJobError) as refused:
                client.distill(source, student, *data, epochs=1, **kwargs)
        finally:
            if case == "running" and isinstance(source, Job):
                source.cancel()

        # Assert
        assert words in str(refused.value)
        assert {j.job_id for j in client.jobs()} - before == created


def test_a_job_file_with_a_distill_section_trains_a_student_async_in_bf16_with_local_steps(
    cluster: LocalCluster, teacher: Job, projects: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    # Prepare: the student's project with a data function and a job file
    folder = Path(projects[1].__file__ or "").parent
    (folder / "data.py").write_text(textwrap.dedent(DATA))
    job_file = {
        "model": "nets.py:Net",
        "data": "data.py:load",
        "mode": "async",
        "local_steps": 4,
        "precision": "bf16",
        # 10 epochs: at 4 the student ended at 0.82 in a loaded CI run (0.85+ when idle)
        "epochs": 10,
        # Adam, not SGD with momentum 0.9: async staleness on top of momentum diverged
        # once under a loaded machine (see tests/containers/test_data_mount.py)
        "optimizer": {"name": "adam", "lr": 0.005},
        "distill": {"teacher": teacher.id, "temperature": 2.0, "alpha": 0.5},
    }
    path = folder / "distill.yaml"
    path.write_text(yaml.safe_dump(job_file))

    # Execute
    result = CliRunner().invoke(app, ["submit", str(path), "--watch", "--address", cluster.address])

    # Assert
    assert result.exit_code == 0, result.output
    job_id = result.output.split("submitted job ")[1].split()[0]
    with cluster.client() as client:
        job = client.job(job_id)
        info = job.info()
        kinds = [e.kind for e in job.metrics().events]
    assert info.state == "completed", info.error
    print(f"\nstudent from the job file: {info.test_accuracy:.4f} after {info.epochs} epochs")
    assert info.test_accuracy is not None and info.test_accuracy > 0.85
    assert "distilled" in kinds
