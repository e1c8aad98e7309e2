"""What Client.submit sends, and the mistakes it refuses before sending anything."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pscluster.client.errors import ClusterUnavailableError, InvalidJobError
from pscluster.client.payload import build_payload
from pscluster.client.sdk import Client
from pscluster.config import Settings
from pscluster.data.dataset import Dataset
from pscluster.model import source, state
from pscluster.model.layout import ParamLayout


def load_module(path: Path) -> types.ModuleType:
    name = f"test_payload_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def models(job_dir: Path) -> types.ModuleType:
    return load_module(job_dir / "code" / "tiny_model.py")


def arrays(n: int = 20, m: int = 10) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n + m, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=n + m)
    return (x[:n], y[:n]), (x[n:], y[n:])


def payload_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "mode": "async",
        "staleness": 0,
        "optimizer": None,
        "epochs": 2,
        "batch_size": 4,
        "model_kwargs": None,
        "loss": "cross_entropy",
        "partitions": 0,
        "shards": 0,
        "seed": 0,
        "name": "t",
    }
    args.update(changes)
    return args


def test_payload_carries_spec_source_layout_and_blobs(models: types.ModuleType) -> None:
    # Prepare
    train, test = arrays()

    # Execute
    payload = build_payload(models.TinyNet, train, test, **payload_args(model_kwargs={"hidden": 5}))
    chunks = list(payload.chunks(chunk_bytes=1024))

    # Assert: the stream is the spec, then every byte of both blobs, in order, then the end.
    assert chunks[0].WhichOneof("part") == "spec"
    blobs: dict[str, bytearray] = {}
    assert chunks[-1].end.blob_bytes == len(payload.dataset) + len(payload.initial_state)
    for c in chunks[1:-1]:
        assert c.WhichOneof("part") == "blob"
        assert len(c.blob.data) <= 1024
        blobs.setdefault(c.blob.blob, bytearray()).extend(c.blob.data)
    assert list(blobs) == ["dataset", "initial_state"]
    ds = Dataset.from_blob(blobs["dataset"])
    assert isinstance(ds.train_x, torch.Tensor)
    assert torch.equal(ds.train_x, torch.from_numpy(train[0]))
    assert ds.train_y.dtype == torch.int64
    spec = chunks[0].spec
    assert (spec.name, spec.mode, spec.epochs, spec.batch_size) == ("t", "async", 2, 4)
    assert (spec.optimizer.name, spec.optimizer.lr, spec.optimizer.momentum) == ("sgd", 0.05, 0.9)
    # A worker rebuilds the same model from the shipped source and kwargs.
    rebuilt = source.build(spec.model.source, spec.model.class_name, spec.model.kwargs_json)
    layout = ParamLayout.of_module(rebuilt)
    assert [(p.name, tuple(p.shape)) for p in spec.model.params] == [
        (s.name, s.shape) for s in layout.slots
    ]
    initial = state.loads(blobs["initial_state"])
    rebuilt.load_state_dict(initial)  # every key present, every shape right


def test_initial_state_is_seeded_and_leaves_the_callers_rng_alone(
    models: types.ModuleType,
) -> None:
    train, test = arrays()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    a = build_payload(models.TinyNet, train, test, **payload_args(seed=7))
    after = torch.rand(3)
    b = build_payload(models.TinyNet, train, test, **payload_args(seed=7))
    c = build_payload(models.TinyNet, train, test, **payload_args(seed=8))

    assert torch.equal(after, expected_next)
    assert a.initial_state == b.initial_state
    assert a.initial_state != c.initial_state


@pytest.mark.parametrize(
    ("model_name", "train_test", "changes", "expected"),
    [
        ("DoubleNet", None, {}, "parameters must be float32"),
        ("Broken", None, {}, "could not build Broken(**{}): RuntimeError: no GPU here"),
        ("TinyNet", "rows", {}, "train X has 20 rows but train y has 19"),
        ("TinyNet", "single", {}, "train must be a pair (X, y)"),
        ("TinyNet", None, {"optimizer": {"name": "sgd", "learning_rate": 1}}, "['learning_rate']"),
        ("TinyNet", None, {"optimizer": {"lr": "fast"}}, "optimizer field has the wrong type"),
        ("TinyNet", None, {"epochs": -1}, "epochs must be between 0 and"),
        ("TinyNet", None, {"batch_size": 2.0}, "batch_size must be an integer"),
        ("TinyNet", None, {"model_kwargs": {"hidden": object()}}, "JSON-serialisable"),
        ("TinyNet", None, {"model_kwargs": {"width": 3}}, "unexpected keyword argument"),
        ("TinyNet", None, {"compression": "topk"}, "compression must be a dict"),
        ("TinyNet", None, {"compression": {"rato": 0.1}}, "compression has unknown field(s)"),
        ("TinyNet", None, {"compression": {"pull_dtype": "fp8"}}, "pull_dtype 'fp8' is unknown"),
        ("TinyNet", None, {"compression": {"ratio": "x"}}, "compression field has the wrong type"),
        ("TinyNet", None, {"backup_workers": -1}, "backup_workers must be >= 0, got -1"),
        ("TinyNet", None, {"stragglers": 2.0}, "stragglers must be a dict"),
        ("TinyNet", None, {"stragglers": {"k": 2}}, "stragglers has unknown field(s) ['k']"),
        ("TinyNet", None, {"stragglers": {"factor": "x"}}, "stragglers field has the wrong type"),
        ("TinyNet", None, {"staleness_aware_lr": "yes"}, "staleness_aware_lr must be True"),
        ("TinyNet", None, {"seed": 2**64}, "seed must be between 0 and"),
        ("TinyNet", None, {"seed": -1}, "seed must be between 0 and"),
    ],
)
def test_submit_refuses_bad_input_before_any_rpc(
    models: types.ModuleType,
    dead_address: str,
    model_name: str,
    train_test: str | None,
    changes: dict[str, Any],
    expected: str,
) -> None:
    # Prepare: a client of an address where nothing listens; reaching the network would
    # surface as ClusterUnavailableError, not as InvalidJobError.
    train, test = arrays()
    if train_test == "rows":
        train = (train[0], train[1][:-1])
    kwargs = payload_args(**changes)
    kwargs.pop("name")
    client = Client(dead_address, settings=Settings(rpc_timeout_seconds=5.0))

    # Execute
    start = time.monotonic()
    with pytest.raises(InvalidJobError) as info:
        if train_test == "single":
            client.submit(getattr(models, model_name), train[0], test, **kwargs)  # type: ignore[arg-type]
        else:
            client.submit(getattr(models, model_name), train, test, **kwargs)
    client.close()

    # Assert
    assert not isinstance(info.value, ClusterUnavailableError)
    assert expected in str(info.value)
    assert info.value.code is not None and info.value.code.name == "INVALID_ARGUMENT"
    assert time.monotonic() - start < 5.0


def test_submit_names_an_instance_passed_for_the_class(models: types.ModuleType) -> None:
    train, test = arrays()

    with pytest.raises(InvalidJobError, match=r"pass the class TinyNet, not an instance"):
        build_payload(models.TinyNet(), train, test, **payload_args())  # type: ignore[arg-type]


def test_model_defined_inside_a_function_is_refused() -> None:
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    train, test = arrays()
    with pytest.raises(InvalidJobError, match="define it at the top level"):
        build_payload(Local, train, test, **payload_args())


def test_unreachable_coordinator_says_how_to_start_one(dead_address: str) -> None:
    settings = Settings(rpc_timeout_seconds=5.0)
    with (
        Client(dead_address, settings=settings) as client,
        pytest.raises(ClusterUnavailableError) as info,
    ):
        client.jobs()

    message = str(info.value)
    assert dead_address in message
    assert "pscluster up --local" in message
