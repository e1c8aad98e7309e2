"""The job's metric (accuracy, mse, mae or loss) and times in the client's views of a job.

Built from hand-made protos, as a coordinator of either age sends them: a newer one names the
metric and sends every evaluation's measurements; an older one knows accuracy only.
"""

from __future__ import annotations

import csv
import math
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from pscluster.client.cli_jobs import JOB_COLUMNS, jobs_view
from pscluster.client.history import History
from pscluster.client.info import JobInfo
from pscluster.client.metrics import JobMetrics
from pscluster.client.progress import describe
from pscluster.v1 import coordinator_pb2 as co_pb2

STARTED = 1_700_000_000.0


def job_info(**fields: object) -> co_pb2.JobInfo:
    """A running job's JobInfo proto, with ``fields`` replaced."""
    base: dict[str, object] = {
        "job_id": "j-1",
        "name": "housing",
        "state": "running",
        "mode": "async",
        "epoch": 1,
        "epochs": 4,
        "progress": 0.4,
        "created_unix": STARTED - 2,
        "started_unix": STARTED,
        "test_accuracy": -1.0,
        "last_loss": 0.05,
        "metric": "mse",
        "metric_value": 0.0312,
    }
    base.update(fields)
    return co_pb2.JobInfo(**base)  # type: ignore[arg-type]


def regression_metrics() -> co_pb2.JobMetrics:
    """Two evaluations of an mae job that measure mse too, and steps from 1 s after the start."""
    return co_pb2.JobMetrics(
        job_id="j-1",
        steps=[
            co_pb2.StepMetric(step=1, loss=0.2, samples=8, worker_id="w", unix_time=STARTED + 1),
            co_pb2.StepMetric(step=2, loss=0.1, samples=8, worker_id="w", unix_time=STARTED + 2),
        ],
        epochs=[
            co_pb2.EpochMetric(
                epoch=e,
                test_accuracy=-1.0,
                test_loss=loss,
                unix_time=STARTED + 3 + e,
                samples=16 * (e + 1),
                metrics={"loss": loss, "mse": loss, "mae": mae},
            )
            for e, loss, mae in ((0, 0.09, 0.25), (1, 0.04, 0.15))
        ],
        events=[co_pb2.JobEvent(unix_time=STARTED + 5, kind="straggler", worker_id="w")],
    )


def classifier_metrics_of_an_older_coordinator() -> co_pb2.JobMetrics:
    """Accuracy and loss in their own fields, no map: what coordinators sent before metrics."""
    return co_pb2.JobMetrics(
        job_id="j-2",
        epochs=[
            co_pb2.EpochMetric(
                epoch=0, test_accuracy=0.9, test_loss=0.3, unix_time=STARTED + 4, samples=48
            )
        ],
    )


@pytest.mark.parametrize(
    ("fields", "metric", "value", "accuracy"),
    [
        ({}, "mse", 0.0312, None),
        ({"metric_value": math.nan}, "mse", None, None),  # before the first evaluation
        (
            {"metric": "accuracy", "metric_value": 0.95, "test_accuracy": 0.95},
            "accuracy",
            0.95,
            0.95,
        ),
        ({"metric": "accuracy", "metric_value": math.nan}, "accuracy", None, None),
        ({"metric": "loss", "metric_value": 0.2}, "loss", 0.2, None),
        # An older coordinator: no metric and no value; accuracy or nothing.
        ({"metric": "", "metric_value": 0.0, "test_accuracy": 0.9}, "accuracy", 0.9, 0.9),
        ({"metric": "", "metric_value": 0.0}, "loss", None, None),
    ],
)
def test_job_info_names_the_jobs_metric_from_a_coordinator_of_any_age(
    fields: dict[str, object], metric: str, value: float | None, accuracy: float | None
) -> None:
    # Execute
    info = JobInfo.from_proto(job_info(**fields))

    # Assert
    assert (info.metric, info.metric_value, info.test_accuracy) == (metric, value, accuracy)


def test_metrics_of_a_regression_carry_every_measurement_and_no_accuracy() -> None:
    # Execute
    m = JobMetrics.from_proto(regression_metrics())

    # Assert
    assert m.final_accuracy is None
    assert m.metric == "mse"  # the reply alone names no metric: the first one measured
    assert m.final_metric == pytest.approx(0.04)
    assert m.metric_names == ["mse", "mae", "loss"]
    assert m.epochs[-1].metrics == pytest.approx({"loss": 0.04, "mse": 0.04, "mae": 0.15})
    # Without the job's start, seconds count from the first thing reported.
    assert [s.seconds for s in m.steps] == [0.0, 1.0]
    assert [e.seconds for e in m.epochs] == [2.0, 3.0]
    assert [e.unix_time for e in m.epochs] == [STARTED + 3, STARTED + 4]


def test_of_job_takes_the_metric_and_the_start_from_the_jobs_info() -> None:
    # Prepare
    info = JobInfo.from_proto(job_info(metric="mae", metric_value=0.15))

    # Execute
    m = JobMetrics.from_proto(regression_metrics()).of_job(info)

    # Assert
    assert m.metric == "mae" and m.final_metric == pytest.approx(0.15)
    assert m.metric_names == ["mae", "mse", "loss"]
    assert m.started_unix == STARTED
    assert [s.seconds for s in m.steps] == [1.0, 2.0]
    assert [e.seconds for e in m.epochs] == [3.0, 4.0]
    assert [e.seconds for e in m.events] == [5.0]


def test_of_job_refuses_the_info_of_another_job() -> None:
    # Prepare
    info = JobInfo.from_proto(job_info(job_id="j-other"))

    # Execute / Assert
    with pytest.raises(ValueError, match="pass both of the same job"):
        JobMetrics.from_proto(regression_metrics()).of_job(info)


def test_metrics_of_an_older_coordinator_read_as_a_classifiers() -> None:
    # Execute
    m = JobMetrics.from_proto(classifier_metrics_of_an_older_coordinator())

    # Assert
    assert m.metric == "accuracy"
    assert m.final_accuracy == m.final_metric == pytest.approx(0.9)
    assert m.epochs[0].metrics == pytest.approx({"accuracy": 0.9, "loss": 0.3})


def test_history_seconds_and_metric_agree_with_the_metrics(tmp_path: Path) -> None:
    # Prepare
    info = JobInfo.from_proto(job_info())
    raw = JobMetrics.from_proto(regression_metrics())

    # Execute
    h = History.from_metrics(info, raw)
    h.to_csv(tmp_path)

    # Assert
    aligned = raw.of_job(info)
    assert h.metric == "mse" and h.started_unix == STARTED
    assert [s.seconds for s in h.steps] == [s.seconds for s in aligned.steps]
    assert [e.seconds for e in h.epochs] == [e.seconds for e in aligned.epochs]
    assert h.metric_values() == pytest.approx([0.09, 0.04])
    assert all(math.isnan(v) for v in h.metric_values("accuracy"))
    with (tmp_path / "epochs.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "seconds", "test_mse", "test_mae", "test_loss", "samples"]
    assert [float(v) for v in rows[2][2:5]] == pytest.approx([0.04, 0.15, 0.04])


def test_a_classifiers_epochs_csv_keeps_its_columns() -> None:
    # Prepare
    info = JobInfo.from_proto(
        job_info(job_id="j-2", metric="accuracy", metric_value=0.9, test_accuracy=0.9)
    )

    # Execute
    h = History.from_metrics(
        info, JobMetrics.from_proto(classifier_metrics_of_an_older_coordinator())
    )

    # Assert
    header, rows = h.tables()["epochs.csv"]
    assert header == ("epoch", "seconds", "test_accuracy", "test_loss", "samples")
    assert rows == [(0, 4.0, 0.9, 0.3, 48)]


@pytest.mark.parametrize(
    ("fields", "shown", "hidden"),
    [
        ({}, "mse 0.0312", "acc"),
        ({"metric": "accuracy", "metric_value": 0.95, "test_accuracy": 0.95}, "acc 0.950", "mse"),
        ({"metric": "loss", "metric_value": 0.25}, "test loss 0.25", "acc"),
        ({"metric_value": math.nan}, "loss 0.0500", "mse"),
    ],
)
def test_the_progress_line_shows_the_jobs_metric(
    fields: dict[str, object], shown: str, hidden: str
) -> None:
    # Execute
    line = describe(JobInfo.from_proto(job_info(**fields)))

    # Assert
    assert line.startswith("epoch 2/4") and shown in line
    assert hidden not in line


def render(infos: list[JobInfo], width: int) -> str:
    buffer = StringIO()
    Console(width=width, file=buffer).print(jobs_view(infos, width))
    return buffer.getvalue()


def listed_jobs() -> list[JobInfo]:
    """A classifier with a long name and status, a finished regression, a failed job."""
    return [
        JobInfo.from_proto(
            job_info(
                job_id="j-3f2a9c1b",
                name="digits-ssp-staleness-4",
                mode="ssp",
                metric="accuracy",
                metric_value=0.9532,
                test_accuracy=0.9532,
                status_message="running: waiting for 2 workers to finish the partitions of epoch 2",
            )
        ),
        JobInfo.from_proto(job_info(job_id="j-00aa11bb", state="completed", epoch=4, progress=1.0)),
        JobInfo.from_proto(
            job_info(
                job_id="j-77cc88dd",
                state="failed",
                mode="sync",
                metric="loss",
                metric_value=math.nan,
                last_loss=-1.0,
                error="Traceback (most recent call last):\nValueError: the loss is not a scalar",
            )
        ),
    ]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_jobs_keeps_every_column_at_80_columns_and_wider(width: int) -> None:
    # Execute
    text = render(listed_jobs(), width)

    # Assert
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines)
    header = lines[0].split()
    assert header[: len(JOB_COLUMNS)] == list(JOB_COLUMNS)
    assert "status" in text  # a column, or the heading of the statuses under the table
    for value in ("j-3f2a9c1b", "ssp", "async", "sync", "running", "completed", "failed"):
        assert value in text
    for value in ("2/4", "40%", "100%", "acc 0.953", "mse 0.0312", "0.0500"):
        assert value in text
    assert "ValueError" in text and "running:" not in text  # the state is not said twice


def test_jobs_at_160_columns_has_a_status_column() -> None:
    # Execute
    text = render(listed_jobs(), 160)

    # Assert
    assert text.splitlines()[0].split()[-1] == "status"
    assert "waiting for 2 workers" in text


def test_jobs_at_80_columns_lists_every_status_in_full_under_the_table() -> None:
    # Execute
    text = render(listed_jobs(), 80)

    # Assert
    assert "j-3f2a9c1b  waiting for 2 workers to finish the partitions of epoch 2" in text
    assert "j-77cc88dd  ValueError: the loss is not a scalar" in text


@pytest.mark.parametrize(
    ("metric", "value", "target", "missed"),
    [
        ("mse", 0.4, 0.5, False),
        ("mse", 0.6, 0.5, True),
        ("loss", 0.5, 0.5, False),
        ("accuracy", 0.96, 0.95, False),
        ("accuracy", 0.94, 0.95, True),
    ],
)
def test_target_metric_is_checked_in_the_metrics_direction(
    metric: str, value: float, target: float, missed: bool
) -> None:
    import typer

    from pscluster.client.cli_jobs import _check_metric_target

    if missed:
        with pytest.raises(typer.Exit):
            _check_metric_target(metric, value, target)
    else:
        _check_metric_target(metric, value, target)
