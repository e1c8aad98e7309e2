"""Compressing a model in this process: each variant measured beside the original, written
in its format and loaded back with the README's one-liners; bad requests refused before
anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pscluster.model_compression import CompressionReport, compress
from pscluster.model_compression.quantize import quiet_torch
from tests.model_compression.models import CNN, MLP, NoLinear, Residual, trained_like


def rows_of_test() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 64)).astype(np.float32), rng.integers(0, 10, 300)


def wide() -> MLP:
    return trained_like(MLP(hidden=512))


def test_int8_is_a_quarter_of_the_size_and_loads_with_torch_jit(tmp_path: Path) -> None:
    # Prepare
    model, (x, y) = wide(), rows_of_test()
    path = tmp_path / "model.int8.pt"

    # Execute
    result = compress(model, (x, y), quantize="int8", output=path, repeats=5)

    # Assert
    original, int8 = result.report.variants
    assert (original.name, int8.name) == ("original", "int8")
    assert original.size_bytes / int8.size_bytes >= 3.5
    assert int8.size_bytes == path.stat().st_size  # the table measures the file it writes
    assert int8.parameters == original.parameters and int8.latency_ms > 0
    with quiet_torch():
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    xs = torch.from_numpy(x)
    with torch.no_grad():
        assert torch.equal(loaded(xs), result.model(xs))
        predicted = result.model(xs).argmax(1).numpy()
    assert int8.metric == pytest.approx(float((predicted == y).mean()))


@pytest.mark.parametrize("half", ["fp16", "bf16"])
def test_half_weights_load_into_the_class_from_safetensors(half: str, tmp_path: Path) -> None:
    model, test = wide(), rows_of_test()
    path = tmp_path / f"model.{half}.safetensors"

    result = compress(model, test, quantize=half, output=path, repeats=3)

    state = load_file(str(path))
    dtype = torch.float16 if half == "fp16" else torch.bfloat16
    assert {v.dtype for v in state.values()} == {dtype}
    net = MLP(hidden=512)
    net.load_state_dict(state)  # the one-liner: cast back to the float32 parameters
    xs = torch.from_numpy(test[0])
    with torch.no_grad():  # the same weights, computed in float32 rather than half
        full, halved = net.eval()(xs), result.model(xs)
    assert (full - halved).abs().max() <= 0.02 * full.abs().max()
    assert result.report.size_ratio(result.report.variants[1]) == pytest.approx(2.0, rel=0.01)


def test_structured_pruning_then_int8_is_smaller_and_loads(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = np.zeros(64, dtype=np.int64)
    path = tmp_path / "cnn.pt"

    result = compress(
        trained_like(CNN()), (x, y), prune={"amount": 0.5, "structured": True}, output=path
    )

    original, pruned = result.report.variants
    assert pruned.parameters < 0.6 * original.parameters
    assert pruned.format == ".pt" and pruned.name == "structured 50%"
    with quiet_torch():
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        assert torch.allclose(loaded(torch.from_numpy(x)), result.model(torch.from_numpy(x)))


def test_the_report_round_trips_through_json(tmp_path: Path) -> None:
    result = compress(wide(), rows_of_test(), prune=0.5, quantize="int8", repeats=3)

    path = result.report.save(tmp_path / "report.json")
    again = CompressionReport.load(path)

    assert again == result.report
    names = [v.name for v in again.variants]
    assert names == ["original", "unstructured 50%", "unstructured 50% + int8"]
    assert again.variants[1].nonzero < 0.51 * again.variants[1].parameters
    assert "| unstructured 50% + int8 |" in again.markdown()


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (MLP(), {"quantize": "int4"}, r"quantize='int4' is unknown"),
        (MLP(), {"prune": 1.0}, r"in \[0, 1\)"),
        (MLP(), {}, "nothing to do"),
        (MLP(), {"quantize": "int8", "finetune_epochs": 2}, "pass prune= as well"),
        (MLP(), {"prune": 0.5, "finetune_epochs": 2}, "needs a cluster"),
        (NoLinear(), {"quantize": "int8"}, "no Linear or LSTM layer"),
        (Residual(), {"prune": {"amount": 0.5, "structured": True}}, "it can slice"),
        (MLP(), {"quantize": "int8", "output": "m.safetensors"}, "name the file m.pt"),
        (MLP(), {"quantize": "fp16", "output": "m.onnx"}, "must end in .safetensors"),
        (MLP(), {"quantize": "fp16", "threads": 0}, "threads must be an integer >= 1"),
    ],
)
def test_a_request_that_cannot_be_done_is_refused_before_anything_is_written(
    model: torch.nn.Module, kwargs: dict[str, object], message: str, tmp_path: Path
) -> None:
    output = kwargs.pop("output", "out.pt")
    x = torch.randn(8, *((1, 8, 8) if isinstance(model, NoLinear) else (64,)))
    if isinstance(model, Residual):
        x = torch.randn(8, 16)
    y = torch.zeros(8, dtype=torch.int64)

    with pytest.raises(ValueError, match=message):
        compress(model, (x, y), output=tmp_path / str(output), **kwargs)  # type: ignore[arg-type]

    assert list(tmp_path.iterdir()) == []
