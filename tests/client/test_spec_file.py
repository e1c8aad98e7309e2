"""The job file: a good one loads and resolves; each kind of mistake names its field."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pscluster.client.spec_file import SpecFileError, load_job_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_good_file_loads_and_resolves(job_dir: Path) -> None:
    # Execute
    job = load_job_file(job_dir / "job.yaml")
    kwargs = job.submit_kwargs()

    # Assert
    assert job.name == "tiny"
    assert job.spec.target_accuracy == 0.1
    model = kwargs["model"]
    assert model.__name__ == "TinyNet"
    # The SDK ships the model as its module's source; that needs the module registered.
    assert "class TinyNet" in inspect.getsource(inspect.getmodule(model))  # type: ignore[arg-type]
    (x, y), (xt, yt) = kwargs["train"], kwargs["test"]
    assert x.shape == (48, 4) and y.shape == (48,) and xt.shape == (12, 4) and yt.shape == (12,)
    assert kwargs["model_kwargs"] == {"hidden": 6}
    assert (kwargs["mode"], kwargs["staleness"], kwargs["epochs"]) == ("ssp", 1, 2)
    assert kwargs["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9}


def test_name_defaults_to_the_file_stem(write_job: Callable[..., Path]) -> None:
    job = load_job_file(write_job(name=None))

    assert job.name == "changed"
    assert job.spec.mode == "ssp"


def test_the_digits_example_loads() -> None:
    job = load_job_file(EXAMPLES / "digits.yaml")
    kwargs = job.submit_kwargs()

    assert kwargs["model"].__name__ == "DigitsNet"
    (x, y), (xt, yt) = kwargs["train"], kwargs["test"]
    assert x.dtype == np.float32 and y.dtype == np.int64 and yt.dtype == np.int64
    assert len(x) + len(xt) == 1797 and x.shape[1] == 64
    assert job.spec.target_accuracy == 0.95


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": None}, "model: required field is missing"),
        ({"epoch": 3}, "epoch: unknown field; expected one of"),
        ({"epochs": "ten"}, "epochs: Input should be a valid integer"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"mode": "fast"}, "mode: Value error, unknown mode 'fast'; expected one of ['async'"),
        ({"optimizer": "sgd"}, "optimizer: Input should be a valid dictionary"),
        ({"target_accuracy": 1.5}, "target_accuracy: Input should be less than or equal to 1"),
        ({"loss": "hinge"}, "loss"),
    ],
)
def test_bad_field_is_named(
    write_job: Callable[..., Path], changes: dict[str, object], expected: str
) -> None:
    path = write_job(**changes)

    with pytest.raises(SpecFileError) as info:
        load_job_file(path)

    assert expected in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": "code/tiny_model.py"}, "field 'model' is 'code/tiny_model.py'; expected"),
        ({"model": "code/nope.py:TinyNet"}, "field 'model': no file"),
        ({"model": "code/tiny_model.py:Nope"}, "tiny_model.py defines no 'Nope'"),
        ({"model": "code/tiny_data.py:load"}, "is not an nn.Module class"),
        ({"data": "code/tiny_data.py:explode"}, "raised OSError: disk on fire"),
        ({"data": "code/tiny_data.py:wrong_shape"}, "must return ((X, y), (X_test, y_test))"),
    ],
)
def test_bad_reference_is_named(
    write_job: Callable[..., Path], changes: dict[str, object], expected: str
) -> None:
    job = load_job_file(write_job(**changes))

    with pytest.raises(SpecFileError) as info:
        job.submit_kwargs()

    assert expected in str(info.value)


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- data\n")

    with pytest.raises(SpecFileError, match="must hold a mapping of fields"):
        load_job_file(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")

    with pytest.raises(SpecFileError, match="is not valid YAML"):
        load_job_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecFileError, match="cannot read job file"):
        load_job_file(tmp_path / "absent.yaml")


def test_model_file_that_fails_to_import(job_dir: Path, write_job: Callable[..., Path]) -> None:
    (job_dir / "code" / "bad_model.py").write_text("import not_a_module_anywhere\n")
    job = load_job_file(write_job(model="code/bad_model.py:Net"))

    with pytest.raises(SpecFileError, match=r"importing bad_model\.py raised ModuleNotFoundError"):
        job.model_class()


def test_compression_passes_through_to_submit(write_job: Callable[..., Path]) -> None:
    path = write_job(compression={"name": "topk", "ratio": 0.01, "pull_dtype": "float16"})
    kwargs = load_job_file(path).submit_kwargs()
    assert kwargs["compression"] == {"name": "topk", "ratio": 0.01, "pull_dtype": "float16"}
    assert load_job_file(write_job(compression=None)).submit_kwargs()["compression"] is None


def test_straggler_options_pass_through_to_submit(write_job: Callable[..., Path]) -> None:
    path = write_job(
        mode="sync", backup_workers=1, stragglers={"factor": 3.0}, staleness_aware_lr=True
    )
    kwargs = load_job_file(path).submit_kwargs()
    assert (kwargs["backup_workers"], kwargs["stragglers"], kwargs["staleness_aware_lr"]) == (
        1,
        {"factor": 3.0},
        True,
    )


def test_a_data_source_section_names_what_the_workers_read(
    write_job: Callable[..., Path], job_dir: Path
) -> None:
    # A built-in reader: its path is relative to the job file, like model:.
    npy = load_job_file(write_job(data={"source": "npy", "path": "big", "loader_workers": 3}))
    kwargs = npy.submit_kwargs()
    assert "train" not in kwargs and "test" not in kwargs
    assert kwargs["data"] == "npy"
    assert kwargs["data_args"] == {"path": str(job_dir / "big")}
    assert (kwargs["loader_workers"], kwargs["prefetch_batches"]) == (3, 2)
    # An absolute path is the workers' (a volume mounted on them).
    parquet = load_job_file(write_job(data={"source": "parquet", "args": {"path": "/data/p"}}))
    assert parquet.submit_kwargs()["data_args"] == {"path": "/data/p"}
    # The user's function, loaded from the file like the model.
    (job_dir / "code" / "big_data.py").write_text("def make(split, root):\n    return []\n")
    own = write_job(data={"source": "code/big_data.py:make", "args": {"root": "/data/x"}})
    kwargs = load_job_file(own).submit_kwargs()
    assert kwargs["data"].__name__ == "make" and kwargs["data_args"] == {"root": "/data/x"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"source": "npy", "pathh": "x"}, "data.DataSection.pathh: unknown field"),
        ({"source": "npy", "loader_workers": -1}, "greater than or equal to 0"),
        ({"args": {}}, "data.DataSection.source: required field is missing"),
    ],
)
def test_a_bad_data_section_names_its_field(
    write_job: Callable[..., Path], data: dict[str, object], expected: str
) -> None:
    with pytest.raises(SpecFileError, match=expected):
        load_job_file(write_job(data=data))
