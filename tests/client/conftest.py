"""Fixtures for the client tests: job files on disk (their model: tests.support's
MODEL_SOURCE), and addresses where nothing listens."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pscluster.client.processes import free_ports
from pscluster.client.spec_file import load_job_file
from tests.support import MODEL_SOURCE

DATA_SOURCE = """
import numpy as np


def load():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return (x[:48], y[:48]), (x[48:], y[48:])


def explode():
    raise OSError("disk on fire")


def wrong_shape():
    return 1, 2, 3
"""

GOOD_YAML = """
name: tiny
model: code/tiny_model.py:TinyNet
model_kwargs: {hidden: 6}
data: code/tiny_data.py:load
mode: ssp
staleness: 1
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
epochs: 2
batch_size: 8
partitions: 2
seed: 3
target_accuracy: 0.1
"""


def write_job_dir(root: Path) -> Path:
    code = root / "code"
    code.mkdir()
    (code / "tiny_model.py").write_text(MODEL_SOURCE)
    (code / "tiny_data.py").write_text(DATA_SOURCE)
    (root / "job.yaml").write_text(textwrap.dedent(GOOD_YAML))
    return root


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A folder with code/tiny_model.py, code/tiny_data.py and a valid job.yaml."""
    return write_job_dir(tmp_path)


@pytest.fixture(scope="module")
def job_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The valid job.yaml, shared by the tests of a module."""
    return write_job_dir(tmp_path_factory.mktemp("job")) / "job.yaml"


@pytest.fixture(scope="module")
def tiny_job(job_file: Path) -> dict[str, Any]:
    """Client.submit keyword arguments of a tiny 3-class job (model and data loaded)."""
    return load_job_file(job_file).submit_kwargs()


@pytest.fixture
def write_job(job_dir: Path) -> Callable[..., Path]:
    """Write a job file with some fields of the good one replaced (None: removed)."""

    def write(**changes: object) -> Path:
        spec = yaml.safe_load(GOOD_YAML)
        for key, value in changes.items():
            if value is None:
                spec.pop(key, None)
            else:
                spec[key] = value
        path = job_dir / "changed.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def dead_address() -> str:
    """A loopback address where nothing listens (the port was free a moment ago)."""
    return f"127.0.0.1:{free_ports('127.0.0.1', 1)[0]}"
