"""Job.history() and `pscluster plot` on a real local cluster, after a real (tiny) job."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.history import CSV_FILES, History
from pscluster.client.local import LocalCluster
from pscluster.client.processes import child_env

SHARDS = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(shards=SHARDS, workers=2, state_dir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def finished(cluster: LocalCluster, tiny_job: dict[str, Any]) -> tuple[str, History]:
    """The id and history of the tiny ssp job (2 epochs, 2 partitions) run to completion."""
    with cluster.client() as client:
        job = client.submit(**tiny_job)
        job.wait(timeout=180)
        return job.id, job.history()


def test_history_tables_are_consistent(
    finished: tuple[str, History], tiny_job: dict[str, Any]
) -> None:
    # Prepare
    _, h = finished
    train_samples = len(tiny_job["train"][1])

    # Assert
    assert h.state == "completed" and h.mode == "ssp"
    numbers = [s.step for s in h.steps]
    assert numbers == sorted(set(numbers)) and len(numbers) > 0
    # Every sample of every epoch is trained on exactly once.
    assert sum(s.samples for s in h.steps) == train_samples * tiny_job["epochs"]
    assert {s.epoch for s in h.steps} == set(range(tiny_job["epochs"]))
    assert all(s.seconds >= -1.0 for s in h.steps)  # worker clocks vs the coordinator's
    assert (
        [e.epoch for e in h.epochs]
        == list(range(tiny_job["epochs"]))
        == list(range(h.epochs_planned))
    )
    assert all(0.0 <= e.test_accuracy <= 1.0 and e.test_loss >= 0 for e in h.epochs)
    # A classifier's metric is its accuracy, the same numbers under either name.
    assert h.metric == "accuracy"
    assert h.metric_values() == [e.test_accuracy for e in h.epochs]
    assert h.metric_values("loss") == [e.test_loss for e in h.epochs]
    assert [e.samples for e in h.epochs] == [
        train_samples * (n + 1) for n in range(tiny_job["epochs"])
    ]
    assert all(a.seconds <= b.seconds for a, b in zip(h.epochs, h.epochs[1:], strict=False))
    # One staleness of each kind for every push a shard applied.
    # Each step pushed its slice to every shard once, and nothing was rejected.
    assert h.pushes_applied == len(h.steps) * SHARDS
    assert sum(h.histogram("version").values()) == h.pushes_applied
    assert sum(h.histogram("clock").values()) == h.pushes_applied
    # ssp with staleness 1: no applied push ran more than one clock ahead.
    assert max(h.histogram("clock")) <= tiny_job["staleness"]
    # Where the step time went: every batch timed once, by the workers that trained
    assert sum(p.batches for p in h.phases) == len(h.steps)
    assert {p.worker for p in h.phases} == {s.worker for s in h.steps}
    assert all(p.forward > 0 and p.backward > 0 and p.pull > 0 and p.push > 0 for p in h.phases)
    assert all(min(p.wait, p.other) >= 0 and p.step > 0 for p in h.phases)


def test_plot_writes_a_png_and_csvs_that_parse(
    cluster: LocalCluster, finished: tuple[str, History], tmp_path: Path
) -> None:
    # Prepare
    job_id, h = finished
    image, folder = tmp_path / "out" / "curves.png", tmp_path / "csv"

    # Execute
    result = CliRunner().invoke(
        app, ["plot", job_id, "-o", str(image), "--csv", str(folder), "-a", cluster.address]
    )

    # Assert
    assert result.exit_code == 0, result.output
    blob = image.read_bytes()
    assert blob.startswith(PNG_MAGIC) and len(blob) > 20_000
    assert str(image) in result.output
    tables = {name: _read_csv(folder / name) for name in CSV_FILES}
    steps, epochs, staleness = tables["steps.csv"], tables["epochs.csv"], tables["staleness.csv"]
    assert [int(r["step"]) for r in steps] == [s.step for s in h.steps]
    assert [float(r["loss"]) for r in steps] == pytest.approx([s.loss for s in h.steps])
    assert list(epochs[0]) == ["epoch", "seconds", "test_accuracy", "test_loss", "samples"]
    assert [float(r["test_accuracy"]) for r in epochs] == pytest.approx(
        [e.test_accuracy for e in h.epochs]
    )
    version = [int(r["pushes"]) for r in staleness if r["kind"] == "version"]
    assert sum(version) == h.pushes_applied
    phases = tables["phases.csv"]
    assert list(phases[0])[:3] == ["seconds", "worker", "batches"]
    assert [float(r["push"]) for r in phases] == pytest.approx([p.push for p in h.phases])


def test_plot_of_an_unknown_job_fails_with_a_message(cluster: LocalCluster, tmp_path: Path) -> None:
    # Execute
    image = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["plot", "nosuchjob", "-o", str(image), "-a", cluster.address])

    # Assert
    assert result.exit_code == 1
    assert "nosuchjob" in result.output and "error" in result.output
    assert not image.exists()


def test_plot_refuses_an_image_format_it_cannot_write(dead_address: str, tmp_path: Path) -> None:
    # Execute: refused before any call (nothing listens at the address)
    result = CliRunner().invoke(
        app, ["plot", "job1", "-o", str(tmp_path / "curves.jpg"), "-a", dead_address]
    )

    # Assert
    assert result.exit_code == 1
    assert ".png" in result.output and "curves.jpg" in result.output


def test_plot_without_matplotlib_says_how_to_install_it(dead_address: str, tmp_path: Path) -> None:
    # Prepare: a Python where `import matplotlib` fails, as where it is not installed
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from pscluster.client.cli import main; main()"
    )
    argv = ["plot", "job1", "-o", str(tmp_path / "c.png"), "-a", dead_address]

    # Execute
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(os.environ, {}),
    )

    # Assert
    assert done.returncode == 1
    assert "needs matplotlib" in done.stderr and "pip install" in done.stderr
    assert "Traceback" not in done.stderr


def test_history_to_csv_refuses_a_file_for_a_folder(
    finished: tuple[str, History], tmp_path: Path
) -> None:
    # Prepare
    _, h = finished
    taken = tmp_path / "file"
    taken.write_text("x")

    # Execute / Assert
    with pytest.raises(ValueError, match="is a file"):
        h.to_csv(taken)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
