"""The locust load test (deploy/locust) against a real local cluster, briefly.

locust runs as its own process, as ``make load`` runs it, against real shard and coordinator
processes; the test reads the CSV stats locust writes. No timing is asserted (the machine is
shared): only that nothing failed and that every kind of call was made.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pscluster.client.local import LocalCluster

# Looked up, never imported: importing locust gevent-patches the whole process (sockets,
# threads, sleep), which would stall every other test's gRPC calls in this pytest run.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed (pip install -e '.[dev]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
LOCUST_DIR = ROOT / "deploy" / "locust"
LOCUSTFILE = LOCUST_DIR / "locustfile.py"
RUN_SECONDS = 20
# locust's own start (torch, grpc imports), the job setup and the drain, on a busy machine.
PROCESS_TIMEOUT = RUN_SECONDS + 150


def _locust(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # No training workers: the locust users are the workers.
    c = LocalCluster(shards=2, workers=0, state_dir=tmp_path_factory.mktemp("cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.timeout(PROCESS_TIMEOUT + 120)
def test_a_short_load_run_has_no_failures_and_makes_every_call(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    # Prepare
    prefix = str(tmp_path / "load")

    # Execute: 3 worker users pushing int8-compressed 1 MB models, 3 client users
    done = _locust(
        "-u", "6", "-r", "6", "--run-time", f"{RUN_SECONDS}s", "--only-summary",
        "--coordinator", cluster.address, "--model-mb", "1", "--codec", "int8",
        "--compute-ms", "20", "--client-users", "3", "--state-dir", str(cluster.state_dir),
        "--rss-every", "5", "--csv", prefix,
        cwd=tmp_path,
    )  # fmt: skip

    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    expected = {
        "Pull 1MB",
        "Push 1MB int8",
        "SubmitJob",
        "GetJob",
        "GetMetrics",
        "ClusterStatus",
        "CancelJob",
    }
    assert expected <= set(rows), f"missing request types: {expected - set(rows)}"
    assert all(rows[n]["Type"] == "grpc" for n in expected)
    assert all(int(rows[n]["Request Count"]) > 0 for n in expected)
    assert rows["Aggregated"]["Failure Count"] == "0", Path(f"{prefix}_failures.csv").read_text()
    # int8 sends a quarter of the float32 bytes plus its scales: well under 1 MB per push
    assert 0 < float(rows["Push 1MB int8"]["Average Content Size"]) < 0.3 * (1 << 20)
    rss = json.loads(Path(f"{prefix}_rss.json").read_text())
    assert set(rss["shards"]) == {"shard-0", "shard-1"}
    assert all(s["start_mb"] > 0 and s["end_mb"] > 0 for s in rss["shards"].values())
    checker = subprocess.run(
        [sys.executable, str(LOCUST_DIR / "check.py"), prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checker.returncode == 0, checker.stdout + checker.stderr
    assert "Push 1MB int8: p50" in checker.stdout


def test_an_unknown_codec_is_refused_before_any_load(tmp_path: Path) -> None:
    # Execute: no cluster is needed, the option is checked at start
    done = _locust("-u", "1", "-t", "5s", "--shards", "127.0.0.1:1", "--codec", "zip", cwd=tmp_path)

    # Assert
    assert done.returncode != 0
    assert "compression.name 'zip' is unknown" in done.stderr


def _write_stats(prefix: Path, failures: int, pushes: int) -> None:
    header = "Type,Name,Request Count,Failure Count,Requests/s,Average Content Size,50%,99%"
    lines = [
        header,
        f"grpc,Push 1MB none,{pushes},{failures},10.0,1048576,40,120",
        f",Aggregated,{pushes},{failures},10.0,1048576,40,120",
    ]
    Path(f"{prefix}_stats.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("failures", "pushes", "rc"), [(0, 100, 0), (3, 100, 1), (0, 0, 1)], ids=str
)
def test_the_checker_fails_a_run_with_failures_or_without_pushes(
    tmp_path: Path, failures: int, pushes: int, rc: int
) -> None:
    # Prepare
    prefix = tmp_path / "load"
    _write_stats(prefix, failures, pushes)

    # Execute
    done = subprocess.run(
        [sys.executable, str(LOCUST_DIR / "check.py"), str(prefix)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Assert
    assert done.returncode == rc, done.stdout + done.stderr
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert (summary["failures"], summary["pushes"]) == (failures, pushes)
