"""Client.distill refuses at the call what cannot be distilled, before asking the cluster
anything: the client points at an address where nothing listens, so a check that let the call
through would end in ClusterUnavailableError instead. (The refusals that need the teacher's
job are tried on a real cluster: tests/e2e/test_distill.py.) The job file's ``distill:``
section is checked field by field."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pscluster.client.errors import InvalidJobError
from pscluster.client.sdk import Client
from pscluster.client.spec_file import SpecFileError, load_job_file
from tests.client.user_code import Classifier

RNG = np.random.default_rng(0)
TRAIN = (RNG.normal(size=(40, 4)).astype(np.float32), RNG.integers(0, 3, 40))
TEST = (RNG.normal(size=(10, 4)).astype(np.float32), RNG.integers(0, 3, 10))


def own_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (output - y).pow(2).mean()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -2.0}, "temperature must be > 0"),
        ({"temperature": math.nan}, "temperature must be > 0"),
        ({"alpha": 1.01}, "alpha must be in [0, 1]"),
        ({"alpha": -0.5}, "alpha must be in [0, 1]"),
        ({"loss": "mse"}, "the student's loss must be one of ['cross_entropy', 'bce_with_logits']"),
        ({"loss": own_loss}, "not 'custom'"),
        ({"epoch": 3}, "unexpected keyword argument 'epoch'"),
    ],
    ids=["t-zero", "t-negative", "t-nan", "alpha-high", "alpha-low", "mse", "own-loss", "typo"],
)
def test_what_cannot_be_distilled_is_refused_before_asking_the_cluster(
    dead_address: str, kwargs: dict[str, Any], words: str
) -> None:
    with Client(dead_address) as client, pytest.raises(InvalidJobError) as refused:
        client.distill("j-teacher", Classifier, TRAIN, TEST, **kwargs)
    assert words in str(refused.value)


def test_a_distill_section_makes_the_file_a_distillation(
    write_job: Callable[..., Path],
) -> None:
    # Execute
    job = load_job_file(write_job(distill={"teacher": "j-3f2a9c1b", "temperature": 2.5}))
    kwargs = job.submit_kwargs()

    # Assert: Client.distill's own arguments beside submit's, alpha at its default
    assert (kwargs["teacher"], kwargs["temperature"], kwargs["alpha"]) == ("j-3f2a9c1b", 2.5, 0.7)
    assert kwargs["model"].__name__ == "TinyNet" and kwargs["epochs"] == 2
    assert "teacher" not in load_job_file(write_job()).submit_kwargs()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"temperature": 4.0}, "distill.teacher: required field is missing"),
        (
            {"teacher": "j-1", "temperature": 0},
            "distill.temperature: Input should be greater than 0",
        ),
        (
            {"teacher": "j-1", "alpha": 2.0},
            "distill.alpha: Input should be less than or equal to 1",
        ),
        ({"teacher": "j-1", "temp": 4.0}, "distill.temp: unknown field"),
    ],
)
def test_a_wrong_distill_section_names_its_field(
    write_job: Callable[..., Path], section: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SpecFileError) as refused:
        load_job_file(write_job(distill=section))
    assert expected in str(refused.value)
