"""bench/coordinator_scale.py runs end to end on a tiny config (--quick: 6 s per scenario, 10
then 20 simulated workers, the first profiled, the coordinator killed in the second) and
writes every figure.

No figure is asserted against a target: throughput on a shared machine is noise. Checked:
the simulated workers really took and completed leases over gRPC, every call was timed, the
kill and restart happened and the lost-lease check ran over acknowledged leases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_coordinator_scale_quick_with_a_kill(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "coordinator_scale.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "coordinator_scale.py"),
        "--quick",
        "--workers",
        "10,20",
        "--seconds",
        "6",
        "--kill-at",
        "3",
        "--profile",
        "--out",
        str(out),
    ]

    # Execute
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)

    # Assert
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["trees"]["tree"]["path"] == str(ROOT)
    profiled, row = result["rows"]
    assert profiled["profile"]["rounds"] > 0 and profiled["profile"]["threads_by_state"]
    assert "kill" not in profiled
    assert row["workers"] == 20 and row["registered"] == 20
    assert row["job"]["state"] == "running"
    f = row["figures"]
    assert f["leases_per_s"] > 0 and f["acquire_lease"]["n"] > 0
    assert f["CompleteTask"]["n"] > 0 and f["Heartbeat"]["n"] > 0
    assert f["ReportProgress"]["n"] > 0
    assert row["cpu"]["coordinator_pct"] > 0 and row["cpu"]["coordinator_rss_mb"] > 0
    kill = row["kill"]
    assert kill["outage_s"] > 0 and kill["lost"]["acked"] > 0
    assert kill["first_ack_after_kill_s"] is not None, "no lease was completed after the restart"
    assert isinstance(kill["lost"]["lost"], int)
    assert "| tree | 20 |" in done.stdout
    assert out.with_suffix(".png").stat().st_size > 0
