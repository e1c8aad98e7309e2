"""The job file of ``pscluster submit``: a YAML spec pointing at the user's model and data code.

Example (paths are relative to the YAML file's folder)::

    name: digits
    model: digits_model.py:DigitsNet
    model_kwargs: {hidden: 128}
    data: digits_data.py:load        # returns ((X, y), (X_test, y_test)), uploaded
    # or data the workers read where it lives (README, "Data where it lives"):
    # data: {source: npy, path: /data/digits-big}
    # data: {source: mydata.py:make_dataset, args: {root: /data/x}, loader_workers: 2}
    mode: ssp
    staleness: 2
    optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
    epochs: 10
    batch_size: 32
    target_accuracy: 0.95
    # the model learns a completed job's model's soft outputs (Client.distill):
    # distill: {teacher: j-3f2a9c1b, temperature: 4.0, alpha: 0.7}

Fields are checked strictly: a typo or a wrong type is an error naming the field, because a
silently ignored ``epoch: 3`` would train for the default ten epochs without saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from pscluster.client.code_refs import CodeRefError, load_ref
from pscluster.client.errors import InvalidJobError
from pscluster.model.names import BUILTIN_LOSSES
from pscluster.server.consistency.job_modes import JOB_MODES


class SpecFileError(InvalidJobError):
    """The job file is missing, malformed, or points at code that does not load."""


class DataSection(BaseModel):
    """``data:`` as a source the workers read: ``{source: npy, path: /data/x}`` or
    ``{source: mydata.py:make_dataset, args: {root: /data/x}}``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: str = Field(description="npy, parquet or path/to/file.py:function")
    args: dict[str, Any] = Field(default_factory=dict)
    path: str = Field("", description="the built-in readers' folder (relative: to the file)")
    loader_workers: int = Field(1, ge=0, le=64)
    prefetch_batches: int = Field(2, ge=0, le=64)


class DistillSection(BaseModel):
    """``distill:``: the job's model is a student of a completed job's model (see
    ``Client.distill``): ``{teacher: JOB_ID, temperature: 4.0, alpha: 0.7}``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    teacher: str = Field(description="the completed job whose model teaches")
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)


class JobFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = ""
    model: str = Field(description="path/to/file.py:ClassName, relative to the YAML file")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data: str | DataSection = Field(
        description="path/to/file.py:function returning ((X, y), (Xt, yt)) to upload, or a "
        "source the workers read: {source: ..., args: {...}}"
    )
    mode: str = "async"  # one of the consistency registry's JOB_MODES, "auto" included
    staleness: int = Field(0, ge=0)
    optimizer: dict[str, Any] | None = None
    # the optimizer of the model's sparse tables, e.g. {name: rowwise_adagrad, lr: 0.05}
    sparse_optimizer: dict[str, Any] | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    # a built-in loss, or path/to/file.py:function for a loss of your own
    loss: str = "cross_entropy"
    metric: Literal["", "accuracy", "auc", "mse", "mae", "loss"] = ""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    init_from: str = Field("", description="a completed job's id: start from its model")
    code_dir: str = Field("", description="ship every .py under this folder (relative)")
    partitions: int = Field(0, ge=0)
    shards: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)
    target_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    # `submit --watch` exits 1 unless the final test metric reaches this: at or below it for
    # mse, mae and loss, at or above it for accuracy
    target_metric: float | None = Field(None, ge=0.0)
    # e.g. {name: topk, ratio: 0.01}; see Client.submit (names and ranges: the coordinator)
    compression: dict[str, Any] | None = None
    backup_workers: int = Field(0, ge=0)
    # e.g. {factor: 2.0, grace_seconds: 5}; see Client.submit
    stragglers: dict[str, Any] | None = None
    staleness_aware_lr: bool = False
    local_steps: int = Field(0, ge=0)
    distill: DistillSection | None = None

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        if mode in JOB_MODES:
            return mode
        raise ValueError(f"unknown mode {mode!r}; expected one of {list(JOB_MODES)}")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        if ":" in loss or loss in BUILTIN_LOSSES:
            return loss
        raise ValueError(
            f"unknown loss {loss!r}; expected one of {list(BUILTIN_LOSSES)} or "
            "path/to/file.py:function"
        )


class LoadedJob:
    """A validated job file with its model class and data loaded, ready for Client.submit."""

    def __init__(self, path: Path, spec: JobFile) -> None:
        self.path = path
        self.spec = spec
        self.base = path.parent

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem

    def model_class(self) -> type[nn.Module]:
        obj = self._resolve("model", self.spec.model)
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise SpecFileError(f"{self.path}: model {self.spec.model!r} is not an nn.Module class")
        return obj

    def data(self) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        assert isinstance(self.spec.data, str)
        fn = self._resolve("data", self.spec.data)
        if not callable(fn):
            raise SpecFileError(f"{self.path}: data {self.spec.data!r} is not a function")
        try:
            result = fn()
        except Exception as e:  # the user's loader: show its error, not ours
            raise SpecFileError(
                f"{self.path}: data function {self.spec.data!r} raised {type(e).__name__}: {e}"
            ) from e
        if not (
            isinstance(result, (tuple, list))
            and len(result) == 2
            and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in result)
        ):
            raise SpecFileError(
                f"{self.path}: data function {self.spec.data!r} must return "
                f"((X, y), (X_test, y_test)), got {type(result).__name__}"
            )
        (x, y), (xt, yt) = result
        return (x, y), (xt, yt)

    def submit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Client.submit`` this file describes (loads model and data)."""
        s = self.spec
        return {
            "model": self.model_class(),
            **self._data_kwargs(),
            "mode": s.mode,
            "staleness": s.staleness,
            "optimizer": s.optimizer,
            "sparse_optimizer": s.sparse_optimizer,
            "epochs": s.epochs,
            "batch_size": s.batch_size,
            "model_kwargs": s.model_kwargs,
            "loss": self.loss(),
            "metric": s.metric,
            "precision": s.precision,
            "init_from": s.init_from or None,
            "code_dir": (self.base / s.code_dir) if s.code_dir else None,
            "partitions": s.partitions,
            "shards": s.shards,
            "seed": s.seed,
            "name": self.name,
            "compression": s.compression,
            "backup_workers": s.backup_workers,
            "stragglers": s.stragglers,
            "staleness_aware_lr": s.staleness_aware_lr,
            "local_steps": s.local_steps,
            **self._distill_kwargs(),
        }

    def _distill_kwargs(self) -> dict[str, Any]:
        """``Client.distill``'s own arguments, when the file has a ``distill:`` section."""
        if self.spec.distill is None:
            return {}
        d = self.spec.distill
        return {"teacher": d.teacher, "temperature": d.temperature, "alpha": d.alpha}

    def _data_kwargs(self) -> dict[str, Any]:
        """Arrays to upload (train, test), or the source the workers read."""
        section = self.spec.data
        if isinstance(section, str):
            train, test = self.data()
            return {"train": train, "test": test}
        args = dict(section.args)
        if section.path:
            if "path" in args:
                raise SpecFileError(f"{self.path}: data: give path or args.path, not both")
            args["path"] = section.path
        if isinstance(args.get("path"), str):  # relative to the job file, like model:
            args["path"] = str(self.base / Path(args["path"]).expanduser())
        source: Any = section.source
        if ":" in section.source:
            source = self._resolve("data.source", section.source)
        return {
            "data": source,
            "data_args": args,
            "loader_workers": section.loader_workers,
            "prefetch_batches": section.prefetch_batches,
        }

    def loss(self) -> Any:
        """A built-in loss name as it is, or the function a ``file.py:function`` names."""
        if ":" not in self.spec.loss:
            return self.spec.loss
        fn = self._resolve("loss", self.spec.loss)
        if not callable(fn):
            raise SpecFileError(f"{self.path}: loss {self.spec.loss!r} is not a function")
        return fn

    def _resolve(self, field: str, ref: str) -> Any:
        try:
            return load_ref(ref, self.base, f"{self.path}: field {field!r}")
        except CodeRefError as e:
            raise SpecFileError(str(e)) from e


def load_job_file(path: str | Path) -> LoadedJob:
    """Read and validate a job file; SpecFileError names the field that is wrong."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecFileError(f"cannot read job file {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise SpecFileError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpecFileError(
            f"{path} must hold a mapping of fields (model:, data:, ...), got {type(raw).__name__}"
        )
    try:
        spec = JobFile.model_validate(raw)
    except ValidationError as e:
        raise SpecFileError(f"{path} is not a valid job file:\n{format_errors(e)}") from e
    return LoadedJob(path.resolve(), spec)


def format_errors(error: ValidationError) -> str:
    """One line per problem: the field, what was wrong, and what is expected."""
    allowed = ", ".join(JobFile.model_fields)
    lines = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(file)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field; expected one of: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
