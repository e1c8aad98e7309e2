"""Compressing a trained digits model on a real cluster (2 shards, 3 workers): int8 and
pruning with a fine-tune job, through the SDK and the CLI, each artefact loaded back with the
README's one-liner and scored here; the shards hold the pruned weights at exactly zero."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.errors import InvalidJobError
from pscluster.client.job import Job
from pscluster.client.local import LocalCluster
from pscluster.model_compression import CompressionReport
from pscluster.model_compression.quantize import quiet_torch
from tests.e2e.compress_models import SkipDigits, WideDigits
from tests.e2e.data import digits, eval_accuracy

pytestmark = pytest.mark.slow

MOMENTUM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}


@pytest.fixture(scope="module")
def trained(cluster: LocalCluster) -> Iterator[Job]:
    """WideDigits trained on digits (async, 10 epochs). Its accuracy is only checked to be
    a trained one's: on a loaded machine async's last steps leave it anywhere from 0.90 to
    0.97, and every figure below is measured against it."""
    train, test = digits()
    with cluster.client() as client:
        job = client.submit(
            model=WideDigits, train=train, test=test, epochs=10, optimizer=MOMENTUM, seed=1
        )
        info = job.wait(timeout=300)
        assert info.test_accuracy is not None and info.test_accuracy >= 0.85
        yield job


def scored(model: torch.nn.Module) -> float:
    """Accuracy on the job's test set, measured here as a user would."""
    _, (x, y) = digits()
    return eval_accuracy(model, x, y)


def test_int8_is_3_5x_smaller_within_a_point_and_loads_with_torch_jit(
    trained: Job, tmp_path: Path
) -> None:
    # Execute
    result = trained.compress(quantize="int8", output=tmp_path / "digits.int8.pt", repeats=20)

    # Assert
    report = result.report
    original, int8 = report.variants
    assert original.metric == pytest.approx(trained.info().test_accuracy, abs=1e-9)
    assert report.size_ratio(int8) >= 3.5, report.markdown()
    assert report.change(int8) >= -1.0, report.markdown()
    with quiet_torch():
        loaded = torch.jit.load(str(tmp_path / "digits.int8.pt"))  # type: ignore[no-untyped-call]
    assert scored(loaded) == pytest.approx(int8.metric, abs=1e-9)


def test_unstructured_half_with_a_3_epoch_fine_tune_keeps_every_pruned_weight_zero(
    trained: Job, tmp_path: Path
) -> None:
    # Execute
    path = tmp_path / "digits.pruned.safetensors"
    result = trained.compress(
        prune={"amount": 0.5, "structured": False}, finetune_epochs=3, output=path, repeats=20
    )

    # Assert: half the weights pruned, and zero in the model the fine-tune job returns
    original, pruned = result.report.variants
    assert result.finetune_job is not None and result.finetune_job.info().state == "completed"
    fetched = result.finetune_job.fetch_model()
    weights = sum(fetched[n].numel() for n in result.masks)
    assert sum(int(m.sum()) for m in result.masks.values()) == weights // 2
    for name, mask in result.masks.items():
        assert torch.equal(fetched[name][mask], torch.zeros(int(mask.sum()))), name
    assert result.report.change(pruned) >= -1.0, result.report.markdown()
    net = WideDigits()
    net.load_state_dict(load_file(str(path)))  # the README's one-liner
    assert scored(net) == pytest.approx(pruned.metric, abs=1e-9)
    assert pruned.nonzero <= original.nonzero - weights // 2


def test_structured_pruning_gives_a_smaller_model_that_loads_and_scores(
    trained: Job, tmp_path: Path
) -> None:
    path = tmp_path / "digits.structured.pt"

    result = trained.compress(
        prune={"amount": 0.5, "structured": True}, finetune_epochs=3, output=path, repeats=20
    )

    original, small = result.report.variants
    assert small.parameters < 0.35 * original.parameters  # two hidden layers at half width
    with quiet_torch():
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    accuracy = scored(loaded)
    assert accuracy == pytest.approx(small.metric, abs=1e-9)
    assert accuracy >= original.metric - 0.05  # it scores like the model it came from
    sizes = {k: tuple(v.shape) for k, v in result.model.named_parameters()}
    assert sizes["fc2.weight"] == (256, 256)  # physically smaller layers


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_the_shards_hold_pruned_weights_at_zero_with_momentum(
    cluster: LocalCluster, trained: Job, mode: str
) -> None:
    # Prepare: where the fine-tune starts, to see that the other weights did train
    start = trained.fetch_model()
    finetune: dict[str, Any] = {"mode": mode, "optimizer": MOMENTUM}

    # Execute
    result = trained.compress(prune=0.5, finetune_epochs=2, finetune=finetune, repeats=3)

    # Assert
    assert result.finetune_job is not None
    fetched = result.finetune_job.fetch_model()
    for name, mask in result.masks.items():
        assert torch.equal(fetched[name][mask], torch.zeros(int(mask.sum()))), name
        moved = fetched[name][~mask] != start[name][~mask]
        assert moved.float().mean() > 0.9, f"{name}: the unpruned weights did not train"

    # Control: the same fine-tune without held zeros moves the pruned weights (momentum and
    # weight decay act on them), so the zeros above are the shards' doing
    pruned = {k: v.clone() for k, v in start.items()}
    for name, mask in result.masks.items():
        pruned[name][mask] = 0.0
    train, test = digits()
    with cluster.client() as client:
        free = client.submit(
            model=WideDigits,
            train=train,
            test=test,
            init_from=pruned,
            epochs=1,
            mode=mode,
            optimizer=MOMENTUM,
        )
        free.wait(timeout=300)
        loose = free.fetch_model()
    name, mask = next(iter(result.masks.items()))
    assert (loose[name][mask] != 0).float().mean() > 0.5


def test_bad_requests_are_refused_before_anything_is_submitted(
    cluster: LocalCluster, trained: Job, tmp_path: Path
) -> None:
    train, test = digits()
    skip = SkipDigits()
    with cluster.client() as client:
        before = len(client.jobs())
        refused: list[tuple[dict[str, Any], str]] = [
            ({"quantize": "int4"}, "quantize='int4' is unknown"),
            ({"prune": 1.0, "finetune_epochs": 3}, r"in \[0, 1\)"),
            ({"prune": -0.5}, r"in \[0, 1\)"),
            ({"quantize": "int8", "output": tmp_path / "m.safetensors"}, "name the file m.pt"),
            ({"prune": 0.5, "finetune_epochs": 1, "finetune": {"lr": 1}}, "finetune= sets"),
        ]
        for kwargs, message in refused:
            with pytest.raises(InvalidJobError, match=message):
                trained.compress(**kwargs)
        with pytest.raises(InvalidJobError, match="finds no layer of SkipDigits it can slice"):
            client.compress(
                model=SkipDigits,
                state=skip.state_dict(),
                train=train,
                test=test,
                prune={"amount": 0.5, "structured": True},
                finetune_epochs=3,
            )
        assert len(client.jobs()) == before
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_the_table_writes_it_as_json_and_plots_it(
    cluster: LocalCluster, trained: Job, tmp_path: Path
) -> None:
    # Prepare
    runner = CliRunner()
    model = tmp_path / "digits.int8.pt"

    # Execute
    result = runner.invoke(
        app,
        ["compress", trained.id, "--quantize", "int8", "-o", str(model), "--repeats", "5"],
        env={"PSC_COORDINATOR": cluster.address},
    )
    plotted = runner.invoke(
        app, ["plot", str(tmp_path / "digits.int8.report.json"), "-o", str(tmp_path / "s.png")]
    )

    # Assert
    assert result.exit_code == 0, result.output
    assert "original" in result.output and "int8" in result.output
    report = CompressionReport.load(tmp_path / "digits.int8.report.json")
    assert [v.name for v in report.variants] == ["original", "int8"]
    assert report.variants[1].size_bytes == model.stat().st_size
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "s.png").stat().st_size > 0
    with quiet_torch():
        loaded = torch.jit.load(str(model))  # type: ignore[no-untyped-call]
    assert scored(loaded) == pytest.approx(report.variants[1].metric)
    assert np.isfinite(report.variants[1].latency_ms)
