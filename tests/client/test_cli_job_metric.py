"""The CLI on a regression job, against a stand-in coordinator that serves canned replies.

A real cluster trains classifiers in the other tests; here the replies are those of a finished
mse job, so what `jobs`, `watch`, `submit --watch`, `metrics` and `plot` print can be checked
exactly, at the 80 columns a pipe gets.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from pscluster.client.cli import app
from pscluster.client.cli_jobs import JOB_COLUMNS
from pscluster.client.processes import child_env
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

JOB = "j-5e1f00d2"
STARTED = 1_700_000_000.0
runner = CliRunner()


class CannedCoordinator(co_grpc.CoordinatorServicer):
    """Answers with one finished regression job; any other job id is NOT_FOUND."""

    def __init__(self) -> None:
        self.info = co_pb2.JobInfo(
            job_id=JOB,
            name="housing-regression",
            state="completed",
            mode="ssp",
            epoch=3,
            epochs=3,
            progress=1.0,
            status_message="completed: test mse 0.0312",
            created_unix=STARTED - 1,
            started_unix=STARTED,
            finished_unix=STARTED + 12.5,
            test_accuracy=-1.0,
            last_loss=0.0291,
            metric="mse",
            metric_value=0.0312,
        )
        self.metrics = co_pb2.JobMetrics(
            job_id=JOB,
            steps=[
                co_pb2.StepMetric(
                    step=n, loss=1.0 / n, samples=8, worker_id="w-0", unix_time=STARTED + n
                )
                for n in range(1, 10)
            ],
            epochs=[
                co_pb2.EpochMetric(
                    epoch=e,
                    test_accuracy=-1.0,
                    test_loss=mse,
                    unix_time=STARTED + 4 * (e + 1),
                    samples=24 * (e + 1),
                    metrics={"loss": mse, "mse": mse},
                )
                for e, mse in enumerate((0.21, 0.074, 0.0312))
            ],
            pushes_applied=18,
            staleness={0: 12, 1: 6},
            clock_staleness={0: 18},
            pushes_by_worker={"w-0": 9},
            timeline=[
                co_pb2.PhasePoint(
                    unix_time=STARTED + 4,
                    worker_id="w-0",
                    batches=4,
                    seconds={
                        "pull": 0.04,
                        "forward": 0.02,
                        "backward": 0.06,
                        "push": 0.08,
                        "wait": 0.0,
                        "other": 0.004,
                    },
                ),
                co_pb2.PhasePoint(
                    unix_time=STARTED + 9,
                    worker_id="w-0",
                    batches=5,
                    seconds={
                        "pull": 0.05,
                        "forward": 0.025,
                        "backward": 0.075,
                        "push": 0.1,
                        "wait": 0.01,
                        "other": 0.001,
                    },
                ),
            ],
        )

    def _job(self, job_id: str, context: grpc.ServicerContext) -> None:
        if job_id != JOB:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id}")

    def GetJob(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> co_pb2.JobInfo:
        self._job(request.job_id, context)
        return self.info

    def ListJobs(
        self, request: co_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> co_pb2.ListJobsReply:
        return co_pb2.ListJobsReply(jobs=[self.info])

    def GetMetrics(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> co_pb2.JobMetrics:
        self._job(request.job_id, context)
        return self.metrics

    def SubmitJob(
        self, request_iterator: Iterator[co_pb2.SubmitJobChunk], context: grpc.ServicerContext
    ) -> co_pb2.JobInfo:
        for _ in request_iterator:
            pass
        return co_pb2.JobInfo(job_id=JOB, state="pending")


@pytest.fixture(scope="module")
def coordinator() -> Iterator[str]:
    """The address of a CannedCoordinator on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # Only the calls the CLI makes are written; the others answer UNIMPLEMENTED, as the
    # generated base class does (its stub declares them abstract).
    canned = CannedCoordinator()  # type: ignore[abstract]
    co_grpc.add_CoordinatorServicer_to_server(canned, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_jobs_piped_at_80_columns_keeps_every_column(coordinator: str) -> None:
    # Execute: CliRunner's output is no terminal, as with `COLUMNS=80 pscluster jobs | cat`
    result = runner.invoke(app, ["jobs", "-a", coordinator], env={"COLUMNS": "80"})

    # Assert
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    assert lines[0].split()[: len(JOB_COLUMNS)] == list(JOB_COLUMNS)
    for value in (JOB, "completed", "ssp", "3/3", "100%", "mse 0.0312", "0.0291"):
        assert value in result.output
    assert "status" in result.output and "test mse 0.0312" in result.output


def test_jobs_through_a_pipe_keeps_every_column(coordinator: str) -> None:
    # Prepare: no COLUMNS, so rich takes a pipe's default width (80)
    env = {k: v for k, v in child_env(os.environ, {}).items() if k != "COLUMNS"}

    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "pscluster.client.cli", "jobs", "-a", coordinator],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    # Assert
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    assert lines[0].split()[: len(JOB_COLUMNS)] == list(JOB_COLUMNS)
    for value in ("ssp", "3/3", "100%", "mse 0.0312", "0.0291", "test mse 0.0312"):
        assert value in done.stdout


def test_watch_of_a_regression_job_ends_with_its_mse(coordinator: str) -> None:
    # Execute
    result = runner.invoke(app, ["watch", JOB, "-a", coordinator])

    # Assert
    assert result.exit_code == 0, result.output
    assert f"job {JOB} completed in 12.5 s: final test mse 0.0312" in result.output
    assert "accuracy" not in result.output


def test_submit_watch_does_not_hold_a_regression_to_target_accuracy(
    coordinator: str, job_file: Path
) -> None:
    # Execute: the job file sets target_accuracy 0.1, which an mse of 0.0312 is "below"
    result = runner.invoke(app, ["submit", str(job_file), "--watch", "-a", coordinator])

    # Assert
    assert result.exit_code == 0, result.output
    assert "final test mse 0.0312" in result.output
    assert "target_accuracy 0.1 was not checked: this job measures mse" in result.output


def test_metrics_shows_the_mse_per_epoch(coordinator: str) -> None:
    # Execute
    result = runner.invoke(app, ["metrics", JOB, "-a", coordinator], env={"COLUMNS": "120"})

    # Assert
    assert result.exit_code == 0, result.output
    assert "mse: lower is better" in result.output
    assert "test mse" in result.output and "test loss" in result.output
    assert "test accuracy" not in result.output
    assert "0.0312" in result.output and "12.0" in result.output  # the last, 12 s in
    assert "pushes applied: 18, rejected: 0" in result.output
    assert "clock staleness" in result.output and "0: 12, 1: 6" in result.output
    assert (
        "time per step, by phase (ms): pull 10.0, wait 1.1, forward 5.0, backward 15.0, "
        "push 20.0, other 0.6; total 51.7"
    ) in " ".join(result.output.split())


def test_metrics_json_names_the_times_it_carries(coordinator: str) -> None:
    # Execute
    result = runner.invoke(app, ["metrics", JOB, "--json", "-a", coordinator])

    # Assert
    assert result.exit_code == 0, result.output
    assert '"metric": "mse"' in result.output
    assert '"unix_time": ' in result.output and '"seconds": 4.0' in result.output
    assert '"time": ' not in result.output


def test_plot_of_a_regression_job(coordinator: str, tmp_path: Path) -> None:
    # Execute
    image, folder = tmp_path / "curves.png", tmp_path / "csv"
    result = runner.invoke(
        app, ["plot", JOB, "-o", str(image), "--csv", str(folder), "-a", coordinator]
    )

    # Assert
    assert result.exit_code == 0, result.output
    assert image.read_bytes().startswith(b"\x89PNG")
    epochs = _read_csv(folder / "epochs.csv")
    assert list(epochs[0]) == ["epoch", "seconds", "test_mse", "test_loss", "samples"]
    assert [float(r["test_mse"]) for r in epochs] == pytest.approx([0.21, 0.074, 0.0312])
    assert [float(r["seconds"]) for r in epochs] == [4.0, 8.0, 12.0]


def test_plot_labels_the_axes_with_the_jobs_metric(
    coordinator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: keep the labels matplotlib is given
    from matplotlib.axes import Axes

    labels: list[str] = []
    set_ylabel: Callable[..., object] = Axes.set_ylabel

    def record(ax: Axes, label: str, *args: object, **kwargs: object) -> object:
        labels.append(label)
        return set_ylabel(ax, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_ylabel", record)

    # Execute
    result = runner.invoke(app, ["plot", JOB, "-o", str(tmp_path / "c.png"), "-a", coordinator])

    # Assert
    assert result.exit_code == 0, result.output
    assert "test mse (lower is better)" in labels
    assert not any("accuracy" in label for label in labels)


def test_an_unknown_job_is_one_line(coordinator: str) -> None:
    # Execute
    result = runner.invoke(app, ["metrics", "j-nope", "-a", coordinator])

    # Assert
    assert result.exit_code == 1
    assert "j-nope" in result.output and "Traceback" not in result.output


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
